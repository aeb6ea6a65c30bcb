"""Classifier types by name, or any ``package.module:ClassName`` implementing the protocol."""
from __future__ import annotations

import importlib
from typing import Any

from classifiers.protocol import Provenance

BUILTIN = {
    "hf_sequence_classification": "classifiers.hf_sequence:HFSequenceClassifier",
    "embedding_prototypes": "classifiers.embedding_prototypes:EmbeddingPrototypeClassifier",
    "constant": "classifiers.constant:ConstantClassifier",
    "llm_prompt": "classifiers.llm_prompt:LLMPromptClassifier",
    "openai_chat": "classifiers.openai_chat:OpenAIChatClassifier",
    "perspective_api": "classifiers.perspective_api:PerspectiveClassifier",
    "vader": "classifiers.vader:VaderClassifier",
}


class ClassifierConfigError(ValueError):
    """A classifier type or its params cannot be used; the message says how to fix it."""


def resolve_class(type_name: str) -> type:
    target = BUILTIN.get(type_name, type_name)
    if ":" not in target:
        raise ClassifierConfigError(
            f"unknown classifier type {type_name!r}: use one of {sorted(BUILTIN)} "
            "or an import path 'package.module:ClassName'")
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ClassifierConfigError(f"cannot import classifier {target!r}: {exc}") from exc
    if not callable(getattr(cls, "classify", None)):
        raise ClassifierConfigError(f"{target!r} has no classify(texts) method")
    return cls


def build_classifier(type_name: str, params: dict[str, Any] | None = None) -> Any:
    """Instantiate a classifier; guarantees it has a ``provenance``."""
    cls = resolve_class(type_name)
    try:
        clf = cls(**(params or {}))
    except TypeError as exc:
        raise ClassifierConfigError(f"bad params for classifier {type_name!r}: {exc}") from exc
    if not isinstance(getattr(clf, "provenance", None), Provenance):
        clf.provenance = Provenance(classifier=type_name, model=cls.__qualname__)
    return clf


def preflight(type_name: str, params: dict[str, Any] | None = None) -> None:
    """Cheap checks before a run starts (import path, model path, label files), so a typo
    fails in a second with one line instead of inside a Ray actor minutes later."""
    cls = resolve_class(type_name)
    check = getattr(cls, "preflight", None)
    if callable(check):
        try:
            check(dict(params or {}))
        except (ValueError, FileNotFoundError) as exc:
            raise ClassifierConfigError(f"classifier {type_name!r}: {exc}") from None
