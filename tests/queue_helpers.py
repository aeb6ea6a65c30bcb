"""Store-level test helpers: a store with the shipped ``QueueConfig`` defaults filled in, and
acknowledging claimed batches the way the pipeline does — labels as typed Arrow rows (the
classifier stage's typing), failures as (post, reason)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa

from jobs.config import PipelineConfig, QueueConfig
from queue_store import ClaimedBatch, CompleteResult, ExportStats, QueueStore, codec
from queue_store import export_output as _export_output
from queue_store.fingerprint import fingerprints
from queue_store.location import Location
from queue_store.models import Ack
from queue_store.rows.shapes import POST_COLUMNS
from queue_store.rows.typed import to_ipc, typed_columns
from queue_store.staging import stage
from tests.conftest import make_posts

Q = QueueConfig()  # the shipped defaults: the one place they are written is the config model


class Store(QueueStore):
    """``QueueStore`` with the config's defaults for what a test does not care about (the job
    always passes them); unversioned batches unless a test names a ``config_hash``."""

    def __init__(self, data_dir: Any, integration: str, *, max_attempts: int | None = None,
                 readonly: bool = False, **kw: Any) -> None:
        super().__init__(data_dir, integration, readonly=readonly, **kw,
                         max_attempts=None if readonly else max_attempts or Q.max_attempts)

    def enqueue(self, posts: Any, batch_size: int = Q.batch_size, config_hash: str = "",
                **kw: Any) -> Any:
        return super().enqueue(posts, batch_size, config_hash, **kw)

    def claim(self, max_batches: int = 1, lease_seconds: float = Q.lease_seconds,
              owner: str = "", config_hash: str = "") -> list[ClaimedBatch]:
        return super().claim(max_batches, lease_seconds, owner, config_hash)

    def extend(self, leases: Any, lease_seconds: float = Q.lease_seconds) -> int:
        return super().extend(leases, lease_seconds)

    def requeue_dead(self, batch_size: int = Q.batch_size) -> int:
        return super().requeue_dead(batch_size)

    def dead_letters(self, limit: int = 20) -> Any:
        return super().dead_letters(limit)


def export_output(store: QueueStore, out: Any,
                  max_rows: int = PipelineConfig().export_rows) -> ExportStats:
    return _export_output(store, out, max_rows)


def posts_of(batch: ClaimedBatch) -> list[dict[str, Any]]:
    """A claimed batch's posts (``codec.PayloadError`` for a payload damaged on disk)."""
    return codec.loads_posts(batch.payload).to_pylist()


def complete(store: QueueStore, batch: Any, labels: dict[str, dict[str, Any]],
             failures: dict[str, str] | None = None, out: Any = None) -> CompleteResult:
    """``labels``: uri → that post's label columns; ``failures``: uri → reason. The labelled
    rows are staged under ``out`` (default: the data_dir's output of the integration), as
    the WriterActor stages them, and recorded by the completion."""
    posts = {p["uri"]: p for p in posts_of(batch)}
    done = [uri for uri in labels if uri in posts] + [u for u in labels if u not in posts]
    staged = None
    if done:
        names, arrays, misfits = typed_columns([labels[u] for u in done])
        assert not misfits, misfits
        columns = {c: pa.array([posts.get(u, {"uri": u}).get(c) for u in done], pa.string())
                   for c in POST_COLUMNS}
        table = pa.table({**columns, **dict(zip(names, arrays))})
    failed = [(posts.get(u, {"uri": u}), reason) for u, reason in (failures or {}).items()]
    acks = [Ack(batch_id=batch.batch_id, lease_id=batch.lease_id, labelled=len(done),
                failed=failed)]
    if done:
        where = out or store.path.parent.parent / store.integration
        staged, _ = stage(store, Location.of(where), "tests", acks, [table])
    return store.complete(acks, staged)


def complete_as_before(store: QueueStore, batch: Any, labels: dict[str, dict[str, Any]]
                       ) -> None:
    """A completion as queue files written before labels went straight to parquet hold it:
    the labelled rows stored in the queue file as one output row, the batch removed (what
    ``export_output`` still exports from such files)."""
    posts = {p["uri"]: p for p in posts_of(batch)}
    names, arrays, misfits = typed_columns([labels[u] for u in labels])
    assert not misfits and set(labels) == set(posts), misfits
    columns = {c: pa.array([posts[u][c] for u in labels], pa.string()) for c in POST_COLUMNS}
    table = pa.table({**columns, **dict(zip(names, arrays))})
    t = store.tables
    with store.conn:  # one transaction, as the old completion was
        store.conn.execute("BEGIN IMMEDIATE")
        store.conn.execute(f"INSERT INTO {t['output']} (batch_id, version, payload, n_rows, "
                           f"created_at) SELECT id, version, ?, ?, 0 FROM {t['input']} "
                           "WHERE id = ?", (to_ipc(table), table.num_rows, batch.batch_id))
        store.conn.execute(f"DELETE FROM {t['input']} WHERE id = ?", (batch.batch_id,))


NAME = "ml_inference_intergroup"
ROOT = Path(__file__).resolve().parents[1]


def spawn_queue_proc(*args: str) -> subprocess.Popen:
    """``python -m tests.queue_procs ARGS`` (another process working on a queue file)."""
    return subprocess.Popen([sys.executable, "-m", "tests.queue_procs", *args], cwd=ROOT)


def fifty_posts_and_a_claimer(data_dir: Path, role: str
                              ) -> tuple[QueueStore, subprocess.Popen, Path]:
    """A queue of 50 posts in batches of 10, and another process playing ``role``
    (``tests/queue_procs.py``) that writes the leases it took to the returned path."""
    store = Store(data_dir, NAME)
    store.enqueue(make_posts(50), batch_size=10)
    leases = data_dir / "leases.json"
    return store, spawn_queue_proc(role, str(data_dir), str(leases)), leases


def queued_uris(store: QueueStore, candidates: Any) -> set[str]:
    """Which of ``candidates`` the store's ledger holds (ever queued, any config_hash)."""
    candidates = list(candidates)
    keys, checks = fingerprints(pa.array(candidates, pa.string()))
    with store._snapshot() as c:  # one view of the ledger's run list
        hits = store.ledger.lookup(c, keys, checks, -1)  # -1: no config_hash is "the same"
    return {u for u, seen in zip(candidates, (hits.same | hits.other).tolist()) if seen}


def input_uris(posts_dir: Path) -> list[str]:
    """Every uri in a posts folder (repeats and invalid posts included)."""
    import pyarrow.dataset as pads

    return pads.dataset(posts_dir, partitioning="hive").to_table(
        columns=["uri"]).column("uri").to_pylist()
