"""Typed classifier params: each classifier declares its params once, as a pydantic model.

Every field states its type, its default, a one-line meaning and its *kind* — what the value
does to the labels — and everything else reads that one declaration: config validation (an
unknown or mistyped param is an error naming it and what is allowed), path resolution (file
and model params are resolved against the config's folder), preflight, ``config_hash`` (which
params change labels) and the README's classifier reference (``jobs/tools/params_reference``).

Kinds:

- ``labels``: the value changes the labels; it enters ``config_hash`` as written.
- ``file``: a file whose *contents* change the labels (moving it does not).
- ``model``: a model (a folder or a hub id) whose *weights* change the labels.
- ``runtime``: speed, placement, budgets or credentials only; not part of ``config_hash``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

LABELS, FILE, MODEL, RUNTIME = "labels", "file", "model", "runtime"


def param(default: Any, description: str, kind: str = LABELS, default_model: bool = False,
          **constraints: Any) -> Any:
    """A declared param: its default, its meaning in one line and its kind (see above).
    ``default_model``: for a model param whose default (None) is a built-in model, so the
    default's weights count too."""
    extra: dict[str, Any] = {"kind": kind}
    if default_model:
        extra["default_model"] = True
    return Field(default, description=description, json_schema_extra=extra, **constraints)


def read_yaml_file(name: str, path: str) -> dict[str, Any]:
    """A ``file`` param's YAML mapping (``name``: the param, for the error's one line)."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{name} {path!r} not found")
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{name} {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{name} {path}: expected a mapping of keys, got "
                         f"{type(raw).__name__}")
    return raw


class ClassifierParams(BaseModel):
    """The base of every classifier's params: unknown params are errors, values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def kind_of(cls, name: str) -> str:
        extra = cls.model_fields[name].json_schema_extra
        return extra.get("kind", LABELS) if isinstance(extra, dict) else LABELS

    @classmethod
    def fields_of_kind(cls, *kinds: str) -> list[str]:
        return [name for name in cls.model_fields if cls.kind_of(name) in kinds]

    @classmethod
    def names(cls) -> list[str]:
        """The params, those a classifier declares itself before the ones it inherits."""
        order: list[str] = []
        for klass in cls.__mro__:
            order += [n for n in getattr(klass, "__annotations__", {})
                      if n in cls.model_fields and n not in order]
        return order

    @classmethod
    def default_models(cls) -> list[str]:
        """Model params whose unset default names a built-in model (its weights count)."""
        return [name for name, field in cls.model_fields.items()
                if isinstance(field.json_schema_extra, dict)
                and field.json_schema_extra.get("default_model")]


class TorchParams(ClassifierParams):
    """Where and how a local torch model runs."""

    device: str = param("auto", "auto: CUDA when present, else CPU; or cpu, cuda, cuda:N",
                        RUNTIME)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = param(
        "auto", "auto: bf16/fp16 on CUDA, fp32 on CPU (scores differ: write it explicitly)")
    torch_threads: int | None = param(None, "CPU threads for torch (default: torch's own)",
                                      RUNTIME, ge=1)


class EncoderParams(TorchParams):
    """Encoder models (sequence classification, embeddings): tokenised once, length-sorted."""

    max_length: int = param(128, "tokens per post; longer posts are cut", ge=1)
    mini_batch_size: int = param(64, "posts per forward pass (length-sorted, padded to their "
                                 "own longest)", RUNTIME, ge=1)
    quantize: Literal["int8"] | None = param(None, "int8: dynamic int8 Linear layers "
                                             "(CPU only; about 2.4x faster, labels may move)")


class HostedParams(ClassifierParams):
    """Calling a hosted model: concurrency, retries, the key's variable."""

    timeout_s: float = param(30.0, "seconds per request", RUNTIME, gt=0)
    max_concurrency: int = param(16, "requests in flight per actor", RUNTIME, ge=1)
    max_retries: int = param(5, "retries per request on 429, 5xx, timeouts and connection "
                             "errors (backoff with jitter, or the server's Retry-After)",
                             RUNTIME, ge=0)
    max_retry_wait_s: float = param(60.0, "the longest single wait, whatever Retry-After asks",
                                    RUNTIME, gt=0)
    retry_budget_s: float = param(300.0, "all of one post's retries together; past it the "
                                  "post fails (retried by the queue, then dead-lettered)",
                                  RUNTIME, gt=0)
