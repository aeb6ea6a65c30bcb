"""The README's classifier reference, generated from the params each classifier declares.

    python -m jobs.tools.params_reference            # print it
    python -m jobs.tools.params_reference --write    # replace it in README.md

A test checks that README.md holds exactly what this prints, so the docs cannot drift from
the declarations (types, defaults, meanings, and whether a param changes the labels).
"""
from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any

from classifiers.params import FILE, LABELS, MODEL, RUNTIME
from classifiers.registry import BUILTIN, params_model, resolve_class

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN = ("<!-- classifier-params:begin (generated from the classifiers' declared params by "
         "`python -m jobs.tools.params_reference --write`; do not edit by hand) -->")
END = "<!-- classifier-params:end -->"
LABEL_EFFECT = {LABELS: "yes", FILE: "yes: its contents", MODEL: "yes: its weights",
                RUNTIME: "no"}


def type_name(annotation: Any) -> str:
    """A param's type as a reader wants it: ``int``, ``str | None``, ``auto / fp32``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " / ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join(type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "—"
    if isinstance(value, (list, tuple)) and len(value) > 3:
        return f"[{', '.join(map(str, value[:2]))}, … ({len(value)})]"
    if isinstance(value, str):
        return value
    return str(value)


def render() -> str:
    lines = [BEGIN]
    for name in sorted(BUILTIN):
        model = params_model(resolve_class(name))
        if model is None:
            continue
        lines += ["", f"**`{name}`**", "",
                  "| param | type | default | changes labels | meaning |",
                  "| --- | --- | --- | --- | --- |"]
        for param in model.names():
            field = model.model_fields[param]
            cells = [f"`{param}`", type_name(field.annotation), default_text(field),
                     LABEL_EFFECT[model.kind_of(param)], field.description or ""]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", END]
    return "\n".join(lines)


def in_readme(text: str) -> str:
    """The generated section as README.md holds it now (empty if it has none)."""
    if BEGIN not in text or END not in text:
        return ""
    return text[text.index(BEGIN):text.index(END) + len(END)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="replace the section in README.md")
    args = ap.parse_args()
    section = render()
    if not args.write:
        print(section)
        return
    text = README.read_text()
    current = in_readme(text)
    if not current:
        raise SystemExit(f"{README} has no {BEGIN[:30]}… / {END} markers to replace between")
    README.write_text(text.replace(current, section))
    print(f"wrote the classifier reference into {README}")


if __name__ == "__main__":
    main()
