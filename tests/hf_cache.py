"""Put a locally built model into a Hugging Face cache under a real hub id.

The cache layout is the hub's own (``models--org--name/snapshots/<revision>/`` and
``refs/main``), so hub-id resolution, offline loading, preflight and ``config_hash``'s
revision run exactly as on a cluster node where the model was fetched with ``hf download``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

REVISION = "0123456789abcdef0123456789abcdef01234567"


def put_in_cache(model_dir: str | Path, repo_id: str, hub_cache: Path,
                 revision: str = REVISION) -> Path:
    folder = hub_cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = folder / "snapshots" / revision
    if not snapshot.exists():
        shutil.copytree(model_dir, snapshot)
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text(revision)
    return snapshot
