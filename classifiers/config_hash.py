"""``config_hash``: a short, stable name for everything that changes an integration's labels.

Hashed: the classifier type; its params in canonical form (sorted keys, JSON), except those
that only change speed or placement (``RUNTIME_PARAMS``); the *contents* of the files the
params name (``labels_file``, ``prompt_file``: editing a label description or the prompt
changes the hash, moving the file does not); and the model's weights (a content hash of a
local folder or of the packaged default; the cached snapshot revision of a hub id).
Precision counts (bf16 scores differ from fp32); batch sizes, devices and actor counts do not.
A plugin classifier (``package.module:Class``) adds its declared ``version`` attribute, or the
content of its module's source file: editing a plugin relabels.
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from classifiers.packaged_model import cached_snapshot, resolve_model_path
from classifiers.torch_runtime import weights_hash

RUNTIME_PARAMS = frozenset({"device", "mini_batch_size", "torch_threads", "prompt_cache",
                            "max_concurrency", "requests_per_minute", "tokens_per_minute",
                            "requests_per_second", "timeout_s", "max_retries", "api_key_env",
                            "max_retry_wait_s", "retry_budget_s",
                            "cost_per_1k_prompt_tokens", "cost_per_1k_completion_tokens"})
FILE_PARAMS = ("labels_file", "prompt_file")
MODEL_TYPES_WITH_DEFAULT = frozenset({"embedding_prototypes"})


def _file_digest(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        return f"missing:{path}"
    return hashlib.blake2b(p.read_bytes(), digest_size=8).hexdigest()


@functools.lru_cache(maxsize=32)
def model_identity(model: str | None) -> str:
    """Content hash of local weights; ``hub-id@revision`` for a cached hub model."""
    try:
        path = resolve_model_path(model)
    except FileNotFoundError:
        return f"missing:{model}"
    if Path(path).is_dir():
        return weights_hash(path) or str(model)
    try:
        snapshot = cached_snapshot(path)  # .../snapshots/<revision>
        if snapshot:
            return f"{path}@{Path(snapshot).name}"
    except Exception:  # noqa: BLE001 - no cache: the id alone
        pass
    return str(path)


def plugin_identity(classifier_type: str) -> str | None:
    """A plugin's declared ``version``, else a digest of its module's source file (None for
    the built-in types, whose code ships with this project)."""
    from classifiers.registry import BUILTIN, resolve_class

    if classifier_type in BUILTIN:
        return None
    cls = resolve_class(classifier_type)
    declared = getattr(cls, "version", None)
    if isinstance(declared, (str, int, float)) and not isinstance(declared, bool):
        return f"version:{declared}"
    import inspect

    try:
        source = inspect.getsourcefile(cls)
    except TypeError:
        source = None
    return f"source:{_file_digest(source)}" if source else f"class:{cls.__qualname__}"


def config_hash(classifier_type: str, params: dict[str, Any]) -> str:
    """12 hex characters; the same for any run whose labels would be the same."""
    canon: dict[str, Any] = {}
    for key, value in sorted(params.items()):
        if key in RUNTIME_PARAMS:
            continue
        if key in FILE_PARAMS and isinstance(value, str):
            value = {"file_content": _file_digest(value)}
        elif key == "model":
            value = {"weights": model_identity(value)}
        canon[key] = value
    if "model" not in params and classifier_type in MODEL_TYPES_WITH_DEFAULT:
        canon["model"] = {"weights": model_identity(None)}
    spec: dict[str, Any] = {"type": classifier_type, "params": canon}
    plugin = plugin_identity(classifier_type)
    if plugin is not None:
        spec["plugin"] = plugin
    blob = json.dumps(spec, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(blob.encode(), digest_size=6).hexdigest()
