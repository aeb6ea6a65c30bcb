"""Allowlist for names that end up inside SQL identifiers or file names."""
from __future__ import annotations

import re

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def check_name(name: str, what: str = "integration name") -> str:
    """Return ``name`` unchanged if it is a safe identifier, else raise ``ValueError``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid {what} {name!r}: use letters, digits and '_' (not starting with a digit), "
            "at most 64 characters"
        )
    return name
