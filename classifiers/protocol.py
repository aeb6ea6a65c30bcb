"""The classifier contract every integration's model implements.

A classifier is a class constructed with the integration's YAML ``classifier.params`` as
keyword arguments, exposing:

- ``classify(texts: list[str]) -> list[dict]``: one dict of label columns per text, same order.
  Raising means "this call failed"; the pipeline then isolates the posts that fail.
- ``provenance``: a ``Provenance`` saying what produced the labels (written to every row).
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel


class Provenance(BaseModel):
    classifier: str
    model: str
    weights_hash: str = ""

    def columns(self) -> dict[str, str]:
        model = f"{self.model}@{self.weights_hash}" if self.weights_hash else self.model
        return {"classifier": self.classifier, "model": model}


@runtime_checkable
class Classifier(Protocol):
    provenance: Provenance

    def classify(self, texts: list[str]) -> list[dict[str, Any]]: ...
