"""``constant``: gives every post the same labels without a model.

For dry runs of the plumbing (a new cluster, a new data dir) and for measuring what the
pipeline itself costs; never a research label.
"""
from __future__ import annotations

from typing import Any

from classifiers.protocol import Provenance


class ConstantClassifier:
    def __init__(self, labels: dict[str, Any] | None = None) -> None:
        self.labels = dict(labels or {"label": "constant"})
        self.provenance = Provenance(classifier="constant", model="none")

    def classify(self, texts: list[str]) -> list[dict[str, Any]]:
        return [dict(self.labels) for _ in texts]
