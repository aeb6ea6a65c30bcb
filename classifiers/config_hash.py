"""``config_hash``: a short, stable name for everything that changes an integration's labels.

Hashed: the classifier type, and its params as written, in canonical form (sorted keys,
JSON) — each as its class declares it (``classifiers.params``): ``labels`` params by value,
``file`` params by the *contents* of the file they name (editing a label description or the
prompt changes the hash, moving the file does not), ``model`` params by the model's weights (a
content hash of a local folder or of the packaged default; the cached snapshot revision of a
hub id), ``runtime`` params (speed, placement, budgets) not at all. A plugin without declared
params has all its params hashed, and every plugin adds its declared ``version`` attribute or
the content of its module's source file: editing a plugin relabels.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
from pathlib import Path
from typing import Any

from classifiers.hf.weights import cached_snapshot, resolve_model_path, weights_hash
from classifiers.params import FILE, MODEL, RUNTIME
from classifiers.registry import BUILTIN, params_model, resolve_class


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


def plugin_identity(cls: type) -> str:
    """A plugin's declared ``version``, else a digest of its module's source file."""
    declared = getattr(cls, "version", None)
    if isinstance(declared, (str, int, float)) and not isinstance(declared, bool):
        return f"version:{declared}"
    try:
        source = inspect.getsourcefile(cls)
    except TypeError:
        source = None
    return f"source:{_file_digest(source)}" if source else f"class:{cls.__qualname__}"


def config_hash(classifier_type: str, params: dict[str, Any]) -> str:
    """12 hex characters; the same for any run whose labels would be the same."""
    blob = json.dumps(_spec(classifier_type, params), sort_keys=True, default=str,
                      separators=(",", ":"))
    return hashlib.blake2b(blob.encode(), digest_size=6).hexdigest()


def not_there_yet(classifier_type: str, params: dict[str, Any]) -> list[str]:
    """The params whose model or file ``config_hash`` holds but that are not there yet (a
    missing local folder or file): a hash computed now would name another version than the
    one computed once they are. (A hub id not in the cache is named by the id alone, so it is
    not told apart here.)"""
    return [key for key, value in _spec(classifier_type, params)["params"].items()
            if isinstance(value, dict) and len(value) == 1
            and str(next(iter(value.values()))).startswith("missing:")]


def _spec(classifier_type: str, params: dict[str, Any]) -> dict[str, Any]:
    """What ``config_hash`` hashes, in canonical form."""
    cls = resolve_class(classifier_type)
    model = params_model(cls)
    canon: dict[str, Any] = {}
    for key, value in sorted(params.items()):
        kind = model.kind_of(key) if model is not None and key in model.model_fields else None
        if kind == RUNTIME:
            continue
        if kind == FILE and isinstance(value, str):
            value = {"file_content": _file_digest(value)}
        elif kind == MODEL:
            value = {"weights": model_identity(value)}
        canon[key] = value
    for key in model.default_models() if model is not None else ():
        if key not in params:  # the default model's weights count too
            canon[key] = {"weights": model_identity(None)}
    spec: dict[str, Any] = {"type": classifier_type, "params": canon}
    if classifier_type not in BUILTIN:
        spec["plugin"] = plugin_identity(cls)
    return spec
