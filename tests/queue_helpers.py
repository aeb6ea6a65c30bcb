"""Acknowledging claimed batches in store-level tests the way the pipeline does: labels as typed
Arrow rows (the classifier stage's typing), failures as (post, reason)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa

from queue_store import CompleteResult, QueueStore
from queue_store.rows.shapes import POST_COLUMNS
from queue_store.rows.typed import typed_columns
from tests.conftest import make_posts


def complete(store: QueueStore, batch: Any, labels: dict[str, dict[str, Any]],
             failures: dict[str, str] | None = None) -> CompleteResult:
    """``labels``: uri → that post's label columns; ``failures``: uri → reason."""
    posts = {p["uri"]: p for p in batch.posts}
    done = [uri for uri in labels if uri in posts] + [u for u in labels if u not in posts]
    table = None
    if done:
        names, arrays, misfits = typed_columns([labels[u] for u in done])
        assert not misfits, misfits
        columns = {c: pa.array([posts.get(u, {"uri": u}).get(c) for u in done], pa.string())
                   for c in POST_COLUMNS}
        table = pa.table({**columns, **dict(zip(names, arrays))})
    failed = [(posts.get(u, {"uri": u}), reason) for u, reason in (failures or {}).items()]
    return store.complete(batch.batch_id, batch.lease_id, table, failed)


NAME = "ml_inference_intergroup"
ROOT = Path(__file__).resolve().parents[1]


def spawn_queue_proc(*args: str) -> subprocess.Popen:
    """``python -m tests.queue_procs ARGS`` (another process working on a queue file)."""
    return subprocess.Popen([sys.executable, "-m", "tests.queue_procs", *args], cwd=ROOT)


def fifty_posts_and_a_claimer(data_dir: Path, role: str
                              ) -> tuple[QueueStore, subprocess.Popen, Path]:
    """A queue of 50 posts in batches of 10, and another process playing ``role``
    (``tests/queue_procs.py``) that writes the leases it took to the returned path."""
    store = QueueStore(data_dir, NAME)
    store.enqueue(make_posts(50), batch_size=10)
    leases = data_dir / "leases.json"
    return store, spawn_queue_proc(role, str(data_dir), str(leases)), leases


def queued_uris(store: QueueStore, candidates: Any) -> set[str]:
    """Which of ``candidates`` the store's ledger holds (ever queued, any version)."""
    candidates = list(candidates)
    return {u for u, seen in zip(candidates, store.seen(candidates)) if seen}


def input_uris(posts_dir: Path) -> list[str]:
    """Every uri in a posts folder (repeats and invalid posts included)."""
    import pyarrow.dataset as pads

    return pads.dataset(posts_dir, partitioning="hive").to_table(
        columns=["uri"]).column("uri").to_pylist()
