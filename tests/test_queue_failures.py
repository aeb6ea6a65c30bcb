"""Queue store under real failures: concurrent OS processes, SIGKILL, export crashes."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from queue_store import ClaimedBatch
from tests.queue_helpers import Store, complete, complete_as_before, export_output, fifty_posts_and_a_claimer, posts_of, spawn_queue_proc
from tests.conftest import make_posts

NAME = "ml_inference_intergroup"
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_four_processes_claim_each_batch_exactly_once(tmp_path):
    store = Store(tmp_path, NAME)
    store.enqueue(make_posts(200 * 5), batch_size=5)
    outs = [tmp_path / f"claims{i}.json" for i in range(4)]
    gate = tmp_path / "go"
    procs = [spawn_queue_proc("claim_until_empty", str(tmp_path), f"w{i}", str(o), str(gate))
             for i, o in enumerate(outs)]
    time.sleep(1.5)
    gate.touch()
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    claims = [json.loads(o.read_text()) for o in outs]
    flat = [b for c in claims for b in c]
    assert len(flat) == 200 and len(set(flat)) == 200
    assert sum(1 for c in claims if c) >= 2  # really concurrent, not one process taking all
    assert store.status().processing_batches == 200


@pytest.mark.slow
def test_sigkilled_owner_loses_its_batches_and_its_late_ack(tmp_path):
    store, proc, leases = fifty_posts_and_a_claimer(tmp_path, "claim_and_hang")
    deadline = time.time() + 60
    while not leases.exists():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    doomed = json.loads(leases.read_text())
    assert len(doomed) == 3
    time.sleep(1.2)  # lease_seconds=1 in the killed process
    reclaimed = store.claim(max_batches=10, owner="rescuer")
    assert {b["batch_id"] for b in doomed} <= {b.batch_id for b in reclaimed}
    for b in map(ClaimedBatch.model_validate, doomed):  # its results arrive late: fenced
        late = complete(store, b, {p["uri"]: {"label": 0} for p in posts_of(b)}, {})
        assert not late.accepted
    assert store.status().output_rows_unexported == 0
    for b in reclaimed:
        assert complete(store, b, {p["uri"]: {"label": 1} for p in posts_of(b)}, {}).accepted
    export_output(store, tmp_path / "out")
    table = pads.dataset(tmp_path / "out", partitioning="hive").to_table()
    assert sorted(table.column("uri").to_pylist()) == sorted(p["uri"] for p in make_posts(50))
    assert set(table.column("label").to_pylist()) == {1}


class _CrashAfterWrite:
    """Delegates to the store but dies between writing parquet and marking it exported."""

    def __init__(self, store):
        self.store = store

    def __getattr__(self, name):
        return getattr(self.store, name)

    def mark_exported(self, export_id):
        raise RuntimeError("killed before marking the export written")


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*.parquet")}


def test_export_crash_then_rerun_rewrites_same_files(tmp_path):
    store = Store(tmp_path, NAME)
    store.enqueue(make_posts(3000, days=5), batch_size=500)
    for b in store.claim(10):  # output rows, as a queue file written before holds them
        complete_as_before(store, b, {p["uri"]: {"label": 1} for p in posts_of(b)})
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        export_output(_CrashAfterWrite(store), out, max_rows=1000)
    crashed_files = _files(out)
    assert crashed_files and store.status().output_rows_exported == 0
    stats = export_output(store, out, max_rows=1000)
    assert crashed_files <= _files(out)  # the crashed export's names were reused
    assert stats.rows == 3000 and stats.exports == 3
    uris = pads.dataset(out, partitioning="hive").to_table().column("uri").to_pylist()
    assert len(uris) == len(set(uris)) == 3000
    assert not list(out.rglob(".tmp-*"))
    assert export_output(store, out).rows == 0  # nothing left to export


def test_clear_keeps_rows_added_after_the_export(tmp_path):
    store = Store(tmp_path, NAME)
    store.enqueue(make_posts(20), batch_size=10)
    [b1] = store.claim(1)
    complete(store, b1, {p["uri"]: {"label": 1} for p in posts_of(b1)}, {})
    export_output(store, tmp_path / "out")
    [b2] = store.claim(1)
    complete(store, b2, {p["uri"]: {"label": 1} for p in posts_of(b2)}, {})
    assert store.clear_exported() == 1
    st = store.status()
    assert (st.output_rows_exported, st.output_rows_unexported) == (0, 10)


@pytest.mark.parametrize("batch_no", [40, 300])  # mid-page; past a page (its ledger run written)
def test_adopt_killed_mid_way_moves_nothing_and_a_rerun_moves_each_post_once(tmp_path,
                                                                            batch_no):
    """Posts queued under a provisional config_hash (``--classifier-later``), some of them
    also queued for the real one: SIGKILL inside ``adopt`` leaves the queue as it was (one
    transaction; a ledger run file it wrote is not part of the ledger), and the next adopt
    queues every post exactly once for the real hash, the ledger knowing each."""
    store = Store(tmp_path, NAME)
    posts = make_posts(40_000)
    store.enqueue(posts, batch_size=100, config_hash="early")
    store.enqueue(posts[:5_000], batch_size=100, config_hash="real", relabel=True)
    before = store.pending_versions()
    proc = spawn_queue_proc("adopt_killed_at", str(tmp_path), "early", "real", str(batch_no))
    assert proc.wait(timeout=120) == -signal.SIGKILL
    assert store.pending_versions() == before  # nothing moved
    named = {run.name for run in store.ledger.runs(store.conn)}
    unnamed = {p.name for p in store.ledger.folder.iterdir()} - named
    assert len(unnamed) == (batch_no > 256)  # pages of 256 batches: the first page's run file
    got = store.adopt("early", "real")
    assert (got.posts, got.already_queued) == (35_000, 5_000)
    assert store.pending_versions() == {"real": 40_000}
    uris = [u for b in store.claim(max_batches=10_000, lease_seconds=60, owner="check",
                                   config_hash="real") for u in posts_of_uris(b)]
    assert len(uris) == len(set(uris)) == 40_000
    again = store.enqueue(posts, batch_size=100, config_hash="real")
    assert (again.enqueued_posts, again.skipped_known) == (0, 40_000)
    assert store.ledger.verify(store.conn) >= 40_000
    named = {run.name for run in store.ledger.runs(store.conn)}
    assert {p.name for p in store.ledger.folder.iterdir()} == named  # the killed one's: gone
    store.close()


def posts_of_uris(batch: ClaimedBatch) -> list[str]:
    return [p["uri"] for p in posts_of(batch)]
