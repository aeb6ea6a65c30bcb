"""Probabilities over named labels → one output row per post: ``label`` (the most probable)
and ``prob_<name>`` for each label. Shared by every classifier that scores a closed set."""
from __future__ import annotations

from typing import Any, Sequence


def label_rows(labels: Sequence[Any], probs: Sequence[Sequence[float]]) -> list[dict[str, Any]]:
    """``labels[i]`` names column i of ``probs`` (one row of probabilities per post); a label
    value keeps its type (``1`` stays an integer) and names its ``prob_`` column."""
    rows = []
    for row in probs:
        best = max(range(len(row)), key=row.__getitem__)
        rows.append({"label": labels[best],
                     **{f"prob_{name}": float(p) for name, p in zip(labels, row)}})
    return rows
