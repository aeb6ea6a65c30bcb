"""Classifier types by name, or any ``package.module:ClassName`` implementing the protocol.

A class that declares ``Params`` (a ``classifiers.params.ClassifierParams`` model) is built
with its validated params (``cls(params)``) and gets validation, docs and versioning from that
declaration; a plugin without one is built with the raw params (``cls(**params)``).
"""
from __future__ import annotations

import importlib
from typing import Any

from pydantic import ValidationError

from classifiers.params import ClassifierParams
from classifiers.protocol import Provenance

BUILTIN = {
    "hf_sequence_classification": "classifiers.hf.sequence:HFSequenceClassifier",
    "embedding_prototypes": "classifiers.hf.embedding:EmbeddingPrototypeClassifier",
    "constant": "classifiers.constant:ConstantClassifier",
    "llm_prompt": "classifiers.hf.llm_prompt:LLMPromptClassifier",
    "openai_chat": "classifiers.hosted.openai_chat:OpenAIChatClassifier",
    "perspective_api": "classifiers.hosted.perspective:PerspectiveClassifier",
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


def params_model(cls: type) -> type[ClassifierParams] | None:
    """The class's declared params, if it declares them."""
    model = getattr(cls, "Params", None)
    return model if isinstance(model, type) and issubclass(model, ClassifierParams) else None


def param_problems(model: type[ClassifierParams], params: dict[str, Any]) -> list[str]:
    """Each problem with ``params`` as one phrase naming the param (``[]`` when they fit)."""
    try:
        model.model_validate(params)
    except ValidationError as exc:
        allowed = ", ".join(model.names())
        out = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(params)"
            if err["type"] == "extra_forbidden":
                out.append(f"params.{where}: unknown param (allowed: {allowed})")
            else:
                out.append(f"params.{where}: {err['msg']}")
        return out
    return []


def typed_params(type_name: str, params: dict[str, Any] | None) -> Any:
    """The params as the class declares them (raw for a class without ``Params``)."""
    cls = resolve_class(type_name)
    model = params_model(cls)
    if model is None:
        return dict(params or {})
    problems = param_problems(model, dict(params or {}))
    if problems:
        raise ClassifierConfigError(f"classifier {type_name!r}: {'; '.join(problems)}")
    return model.model_validate(dict(params or {}))


def build_classifier(type_name: str, params: dict[str, Any] | None = None) -> Any:
    """Instantiate a classifier; guarantees it has a ``provenance``."""
    cls = resolve_class(type_name)
    typed = typed_params(type_name, params)
    try:
        clf = cls(**typed) if isinstance(typed, dict) else cls(typed)
    except TypeError as exc:
        raise ClassifierConfigError(f"bad params for classifier {type_name!r}: {exc}") from exc
    if not isinstance(getattr(clf, "provenance", None), Provenance):
        clf.provenance = Provenance(classifier=type_name, model=cls.__qualname__)
    return clf


def preflight(type_name: str, params: dict[str, Any] | None = None) -> None:
    """Cheap checks before a run starts (params, model present, files, key), so a typo fails
    in a second with one line instead of inside a Ray actor minutes later."""
    cls = resolve_class(type_name)
    typed = typed_params(type_name, params)
    check = getattr(cls, "preflight", None)
    if callable(check):
        try:
            check(typed)
        except (ValueError, FileNotFoundError) as exc:
            raise ClassifierConfigError(f"classifier {type_name!r}: {exc}") from None
