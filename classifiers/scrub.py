"""One scrubber for every string that may leave a process: API keys never reach a reason, a log
line, a run summary or the console.

Keys are registered by value when they are read (``api_key``, the stage's secrets); ``scrub``
removes every registered value and the usual places a key travels in — ``Bearer <token>``,
``?key=``/``&api_key=``-style query parameters, ``Authorization``/``x-api-key`` headers and
``sk-…`` tokens — even when the value was never registered (a key echoed back by a server in
another form). Plain Python: the classifiers, the Ray stage and the CLI all call it.
"""
from __future__ import annotations

import re
import threading

MASK = "***"
_MIN_SECRET_CHARS = 6  # shorter values would mask ordinary words
_secrets: set[str] = set()
_lock = threading.Lock()
_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[^\s\"',;}\]]+"),
    re.compile(r"(?i)([?&](?:key|api_key|apikey|api-key|access_token|token)=)[^&\s\"'#]+"),
    re.compile(r"(?i)((?:authorization|x-api-key|api-key|api_key)[\"']?\s*[:=]\s*[\"']?)"
               r"(?!bearer\s)[^\s\"',;}\]]+"),
    re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"),
)


def register_secret(value: str | None) -> None:
    """Remember ``value`` so that ``scrub`` removes it wherever it appears."""
    if isinstance(value, str) and len(value) >= _MIN_SECRET_CHARS:
        with _lock:
            _secrets.add(value)


def scrub(text: object) -> str:
    """``text`` (any object, as ``str``) with every secret masked."""
    out = text if isinstance(text, str) else str(text)
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for value in known:
        if value in out:
            out = out.replace(value, MASK)
    for pattern in _PATTERNS:
        out = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + MASK, out)
    return out
