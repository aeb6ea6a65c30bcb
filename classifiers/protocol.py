"""The classifier contract every integration's model implements.

A classifier is a class constructed with the integration's YAML ``classifier.params`` as
keyword arguments, exposing:

- ``classify(texts: list[str]) -> list[dict]``: one dict of label columns per text, same order.
  Raising means "this call failed"; the pipeline then isolates the posts that fail. A
  classifier that knows which post failed (a hosted model's bad answer) returns a
  ``PostFailure`` in that post's place instead: only that post fails, nothing is re-run.
  ``FatalClassifierError`` (e.g. a rejected API key) stops the whole run at once, leaving
  every post claimable.
- ``provenance``: a ``Provenance`` saying what produced the labels (written to every row).
- optional ``usage() -> dict[str, int]``: counters since the last call (requests, tokens),
  added to the run summary.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel


class PostFailure(BaseModel):
    """Stands in for one post's labels when that post alone failed."""

    reason: str


class FatalClassifierError(Exception):
    """Nothing can succeed (bad credentials, a forbidden model): stop the run, fail no post."""


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
