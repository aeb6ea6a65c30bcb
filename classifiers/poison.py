"""Run a classifier on a batch so that one bad post fails alone.

When ``classify`` raises or returns something unusable for a group of texts, the group is
bisected until the posts that fail are isolated; every other post still gets its labels.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

from classifiers.protocol import FatalClassifierError, PostFailure
from queue_store.isolate import isolate_failures

MAX_REASON_CHARS = 500


class Outcome(NamedTuple):
    labels: dict[str, Any] | None
    reason: str | None

    @property
    def ok(self) -> bool:
        return self.labels is not None


class BadOutput(Exception):
    """The classifier returned, but not one finite dict per input."""


_AS_IS = frozenset({str, int, bool, type(None)})  # the common case, checked by type alone


def _plain(value: Any, column: str) -> Any:
    """A value Arrow can type: a finite scalar, or a list / str-keyed dict of such values."""
    kind = type(value)
    if kind in _AS_IS:
        return value
    if kind is float and math.isfinite(value):
        return value
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy / torch values, arrays
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        raise BadOutput(f"non-finite value {value!r} in column {column!r}")
    if isinstance(value, (list, tuple)):
        return [_plain(v, column) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v, column) for k, v in value.items()}
    if value is not None and not isinstance(value, (str, int, float, bool)):
        raise BadOutput(f"column {column!r} holds {type(value).__name__}, not a value Arrow "
                        "can store (scalar, list or dict)")
    return value


def checked(outputs: Any, n_inputs: int) -> list[dict[str, Any] | PostFailure]:
    if not isinstance(outputs, (list, tuple)) or len(outputs) != n_inputs:
        got = len(outputs) if isinstance(outputs, (list, tuple)) else type(outputs).__name__
        raise BadOutput(f"classifier returned {got} results for {n_inputs} inputs")
    rows: list[dict[str, Any] | PostFailure] = []
    for out in outputs:
        if isinstance(out, PostFailure):
            rows.append(out)
            continue
        if not isinstance(out, dict):
            raise BadOutput(f"classifier returned {type(out).__name__}, not a dict")
        rows.append({k if type(k) is str else str(k): v if type(v) in _AS_IS  # noqa: E721
                     else _plain(v, str(k)) for k, v in out.items()})
    return rows


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_REASON_CHARS]


def classify_isolating(classifier: Any, texts: Sequence[str]) -> list[Outcome]:
    """Outcome per text, in order; never raises for an ``Exception`` inside ``classify``
    (``FatalClassifierError`` excepted: nothing can succeed, the run stops)."""
    done, failed = isolate_failures(
        list(range(len(texts))),
        lambda idx: checked(classifier.classify([texts[i] for i in idx]), len(idx)),
        passthrough=(FatalClassifierError,))
    outcomes: list[Outcome | None] = [None] * len(texts)
    for idx, rows in done:
        for i, row in zip(idx, rows):
            outcomes[i] = (Outcome(None, row.reason[:MAX_REASON_CHARS])
                           if isinstance(row, PostFailure) else Outcome(row, None))
    for i, exc in failed:
        outcomes[i] = Outcome(None, _reason(exc))
    return outcomes  # type: ignore[return-value]
