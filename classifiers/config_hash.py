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
import itertools
import json
from pathlib import Path
from typing import Any

from classifiers.hf.weights import (cached_snapshot, is_hub_id, resolve_model_path, weights_hash,
                                     written_as_path)
from classifiers.params import FILE, MODEL, RUNTIME
from classifiers.registry import BUILTIN, params_model, resolve_class


def _file_digest(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        return f"missing:{path}"
    return hashlib.blake2b(p.read_bytes(), digest_size=8).hexdigest()


def model_identity(model: str | None) -> str:
    """Content hash of local weights; ``hub-id@revision`` for a cached hub model. Asked anew
    each time (a model that arrives, or changes, in a long-lived process is seen); the
    content hash is computed once per state of the weight files."""
    try:
        path = resolve_model_path(model)
    except FileNotFoundError:
        return f"missing:{model}"
    if Path(path).is_dir():
        return _weights_digest(path, _weight_files_state(path)) or str(model)
    try:
        snapshot = cached_snapshot(path)  # .../snapshots/<revision>
        if snapshot:
            return f"{path}@{Path(snapshot).name}"
    except Exception:  # noqa: BLE001 - no cache: the id alone
        pass
    return str(path)


def _weight_files_state(folder: str) -> tuple[tuple[str, int, int], ...]:
    """Name, size and modification time of each file in a model folder."""
    return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns)
                 for f in sorted(Path(folder).iterdir()) if f.is_file())


@functools.lru_cache(maxsize=32)
def _weights_digest(folder: str, state: tuple[tuple[str, int, int], ...]) -> str:
    return weights_hash(folder)


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
    return _digest(_spec(classifier_type, params))


def not_there_yet(classifier_type: str, params: dict[str, Any]) -> list[str]:
    """The params whose model or file ``config_hash`` holds but that are not there yet (a
    missing local folder or file, a hub id not in the cache): a hash computed now names
    another version than the one computed once they are (see ``deferred_hashes``)."""
    spec, absent = _spec(classifier_type, params), _absent(classifier_type, params)
    return [key for key, value in absent.items() if spec["params"][key] == value]


MAX_DEFERRED = 4  # models and files of one classifier whose absences are named (2^4 - 1 sets)


def deferred_hashes(classifier_type: str, params: dict[str, Any]) -> list[str]:
    """The config_hashes an enqueue computed for this classifier while some of the models or
    files its hash holds were not there yet (``--classifier-later``): one per non-empty set
    of them absent, of those in place now. A run with them in place labels such batches as
    its own version (``QueueStore.adopt``): the config is the same, only what it names had
    not arrived."""
    spec, absent = _spec(classifier_type, params), _absent(classifier_type, params)
    present = [key for key, value in absent.items() if spec["params"][key] != value]
    hashes = []
    for size in range(1, min(len(present), MAX_DEFERRED) + 1):
        for keys in itertools.combinations(present[:MAX_DEFERRED], size):
            variant = {**spec, "params": {**spec["params"], **{k: absent[k] for k in keys}}}
            hashes.append(_digest(variant))
    return hashes


def _digest(spec: dict[str, Any]) -> str:
    blob = json.dumps(spec, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(blob.encode(), digest_size=6).hexdigest()


def _absent_model(model: str | None) -> str:
    """``model_identity`` of a model that is not there: a hub id not in the cache is named by
    the id alone, a missing folder (or packaged default) as missing."""
    if model and is_hub_id(model) and not written_as_path(model):
        return str(model)
    return f"missing:{model}"


def _absent(classifier_type: str, params: dict[str, Any]) -> dict[str, Any]:
    """For each model and file ``config_hash`` holds, its canonical form while it is not
    there."""
    model = params_model(resolve_class(classifier_type))
    if model is None:
        return {}
    found: dict[str, Any] = {}
    for key, value in sorted(params.items()):
        kind = model.kind_of(key) if key in model.model_fields else None
        if kind == FILE and isinstance(value, str):
            found[key] = {"file_content": f"missing:{value}"}
        elif kind == MODEL:
            found[key] = {"weights": _absent_model(value)}
    for key in model.default_models():
        if key not in params:
            found[key] = {"weights": _absent_model(None)}
    return found


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
