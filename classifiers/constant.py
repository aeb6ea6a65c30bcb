"""``constant``: gives every post the same labels without a model.

For dry runs of the plumbing (a new cluster, a new data dir) and for measuring what the
pipeline itself costs; never a research label.
"""
from __future__ import annotations

from typing import Any

from classifiers.params import ClassifierParams, param
from classifiers.protocol import Provenance


class ConstantParams(ClassifierParams):
    labels: dict[str, Any] = param({"label": "constant"}, "the label columns every post gets")


class ConstantClassifier:
    Params = ConstantParams

    def __init__(self, params: ConstantParams) -> None:
        self.labels = dict(params.labels)
        self.provenance = Provenance(classifier="constant", model="none")

    def classify(self, texts: list[str]) -> list[dict[str, Any]]:
        return [dict(self.labels) for _ in texts]
