"""A queue file that gives its space back: cleared output rows' pages return to the file
system, a full rewrite is refused while a run holds leases, and a rewrite killed part-way
loses nothing."""
from __future__ import annotations

import os
import signal
import time

import pytest

from jobs.backfill import main
from queue_store import QueueBusyError
from tests.queue_helpers import NAME, Store, complete, export_output, posts_of, spawn_queue_proc
from queue_store.schema import PAGE_SIZE, WAL_KEEP_BYTES
from tests.cli_helpers import write_config
from tests.conftest import make_posts
from tests.pipeline_helpers import PLUGIN


def _labelled_and_exported(data_dir, n: int) -> Store:
    store = Store(data_dir, NAME)
    store.enqueue(make_posts(n), batch_size=500)
    while batches := store.claim(max_batches=5):
        for b in batches:
            complete(store, b, {p["uri"]: {"label": "intergroup", "score": 0.5}
                                for p in posts_of(b)})
    export_output(store, str(data_dir / "out"), 50_000)
    return store


def test_clearing_exported_rows_gives_their_pages_back(tmp_path):
    store = _labelled_and_exported(tmp_path, 20_000)
    try:
        assert store.clear_exported() > 0
        res = store.compact()
        # What is left is about a page per table and index (18 of them) and the file's
        # own, whatever the posts were.
        assert res.file_bytes_after <= 24 * PAGE_SIZE < res.file_bytes_before / 5, res
        st = store.status()
        assert st.pending_posts == st.processing_posts == st.output_rows_unexported == 0
        assert st.file_bytes == res.file_bytes_after and st.ledger_bytes == res.ledger_bytes
        again = store.enqueue(make_posts(20_000), batch_size=500)  # the ledger still knows
        assert again.enqueued_posts == 0 and again.skipped_known == 20_000
    finally:
        store.close()


def test_the_wal_stays_bounded_while_batches_pass_through(tmp_path):
    """A run writes every batch at least three times (queued, claimed, completed): the WAL
    beside the queue file is checkpointed and cut back as it goes, never left at SQLite's
    default 1000 pages (64 MiB at this page size). Incompressible posts, 40 MB written."""
    store = Store(tmp_path, NAME)
    try:
        wal = store.path.with_name(store.path.name + "-wal")
        peak = 0
        for day in range(20):
            posts = make_posts(1000, start=day * 1000)
            for p in posts:
                p["text"] = os.urandom(500).hex()
            store.enqueue(posts, batch_size=1000)
            peak = max(peak, wal.stat().st_size)
            for b in store.claim(max_batches=1):
                peak = max(peak, wal.stat().st_size)
                complete(store, b, {p["uri"]: {"label": "intergroup", "score": 0.5}
                                    for p in posts_of(b)})
                peak = max(peak, wal.stat().st_size)
        assert peak <= 2 * WAL_KEEP_BYTES, f"WAL peaked at {peak:,} bytes"
        assert store.status().pending_posts == 0
    finally:
        store.close()


def test_a_full_rewrite_is_refused_while_leased_and_keeps_every_post(tmp_path):
    store = Store(tmp_path, NAME)
    try:
        store.enqueue(make_posts(3000), batch_size=100)
        [held] = store.claim()
        with pytest.raises(QueueBusyError, match="1 batch\\(es\\) are leased"):
            store.compact(full=True)
        assert store.release(held.batch_id, held.lease_id)
        res = store.compact(full=True)
        assert res.full and res.file_bytes_after <= res.file_bytes_before
        uris = [p["uri"] for b in store.claim(max_batches=100) for p in posts_of(b)]
        assert sorted(uris) == sorted(p["uri"] for p in make_posts(3000))
    finally:
        store.close()


def test_compact_queue_verb_refuses_in_one_line_while_a_run_holds_leases(tmp_path, capsys):
    cfg = write_config(tmp_path, {"type": PLUGIN})
    store = Store(tmp_path / "data", NAME)
    try:
        store.enqueue(make_posts(500), batch_size=100)
        [held] = store.claim()
        assert main(["--config", str(cfg), "--compact-queue"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: queue file ") and "leased" in err[0]
        store.release(held.batch_id, held.lease_id)
        assert main(["--config", str(cfg), "--compact-queue"]) == 0
        assert f"{NAME}: queue file " in capsys.readouterr().out
    finally:
        store.close()


def test_a_rewrite_killed_part_way_loses_and_repeats_nothing(tmp_path):
    posts = make_posts(30_000)
    for p in posts:
        p["text"] = p["text"] * 20  # a file big enough to be killed mid-rewrite
    store = Store(tmp_path, NAME)
    store.enqueue(posts, batch_size=500)
    store.close()
    started = tmp_path / "started"
    proc = spawn_queue_proc("compact_full", str(tmp_path), str(started))
    deadline = time.monotonic() + 60
    while not started.exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.005)
    time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = Store(tmp_path, NAME)
    try:
        assert store.status().pending_posts == 30_000
        uris = [p["uri"] for b in store.claim(max_batches=1000) for p in posts_of(b)]
        assert len(uris) == len(set(uris)) == 30_000
    finally:
        store.close()
