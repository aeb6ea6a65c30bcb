"""The enqueue ledger's run files: colliding fingerprints stay apart, merges lose nothing,
files no committed transaction names are ignored and cleaned up."""
from __future__ import annotations

import functools
import os
import sqlite3
import time

import numpy as np
import pyarrow as pa
import pytest

import queue_store.ledger as ledger_mod
import queue_store.rows.validation as validation
from tests.queue_helpers import Store
from queue_store.fingerprint import fingerprints
from queue_store.ledger import Ledger
from tests.conftest import make_posts


def _ledger(tmp_path) -> tuple[Ledger, sqlite3.Connection]:
    conn = sqlite3.connect(tmp_path / "q.db", isolation_level=None)
    conn.execute("CREATE TABLE runs (name TEXT PRIMARY KEY, n INTEGER NOT NULL)")
    return Ledger(tmp_path / "q.ledger", "runs"), conn


def _i64(*xs: int) -> np.ndarray:
    return np.array(xs, dtype=np.int64)


def _write(conn: sqlite3.Connection, fn, *args) -> None:
    """One ledger write in a transaction of its own."""
    conn.execute("BEGIN IMMEDIATE")
    fn(conn, *args)
    conn.execute("COMMIT")


def _merge_all(led: Ledger, conn: sqlite3.Connection) -> int:
    merges = 0
    while sources := led.merge_candidates(conn):
        tmp, n = led.write_merged([r for r in led.runs(conn) if r.name in sources])
        conn.execute("BEGIN IMMEDIATE")
        assert led.swap_in(conn, tmp, n, sources)
        conn.execute("COMMIT")
        led.unlink_runs(sources)
        merges += 1
    return merges


def test_colliding_keys_are_told_apart_by_their_check(tmp_path):
    led, conn = _ledger(tmp_path)
    conn.execute("BEGIN IMMEDIATE")
    led.add(conn, _i64(7, 7, -3), _i64(1, 2, 9), vid=1, seq=1)
    conn.execute("COMMIT")
    hits = led.lookup(conn, _i64(7, 7, 7, -3, -3), _i64(2, 3, 1, 9, 8), vid=1)
    assert hits.same.tolist() == [True, False, True, True, False]
    other = led.lookup(conn, _i64(7, 7), _i64(1, 5), vid=2)
    assert other.other.tolist() == [True, False] and not other.same.any()


def test_store_queues_two_uris_whose_keys_collide_and_each_once(tmp_path, monkeypatch):
    """Every key made equal (a 64-bit collision for every pair): posts are still told apart
    by the other 64 bits, in the input (repeats) and across enqueues (the ledger)."""
    def colliding(uris):
        keys, checks = fingerprints(uris)
        return np.zeros_like(keys), checks

    monkeypatch.setattr(validation, "fingerprints", colliding)
    posts = make_posts(300)
    store = Store(tmp_path, "g")
    try:
        first = store.enqueue(posts[:200] + posts[:10], batch_size=50, config_hash="v")
        assert first.enqueued_posts == 200 and first.invalid_by_reason == {"duplicate uri": 10}
        again = store.enqueue(posts[100:], batch_size=50, config_hash="v")
        assert again.enqueued_posts == 100 and again.skipped_known == 100
        assert store.status().pending_posts == 300
    finally:
        store.close()


def test_merges_keep_every_entry_and_version(tmp_path, monkeypatch):
    monkeypatch.setattr(ledger_mod, "MERGE_CHUNK", 37)  # many merge steps per merge
    monkeypatch.setattr(ledger_mod, "TIER_BASE", 50)
    led, conn = _ledger(tmp_path)
    rng = np.random.default_rng(0)
    written = []
    for seq in range(1, 40):  # 39 runs: several tiers of merges
        keys = rng.integers(-50, 50, size=40, dtype=np.int64)  # many equal keys
        checks = rng.integers(0, 1 << 40, size=40, dtype=np.int64)
        vid = seq % 3
        conn.execute("BEGIN IMMEDIATE")
        led.add(conn, keys, checks, vid=vid, seq=seq)
        conn.execute("COMMIT")
        written.append((keys, checks, vid))
    assert _merge_all(led, conn) >= 9
    runs = led.runs(conn)
    assert len(runs) < 10 and sum(r.n for r in runs) == 39 * 40
    for run in runs:
        assert (np.diff(run.keys) >= 0).all()
    for keys, checks, vid in written:
        hits = led.lookup(conn, keys, checks, vid)
        assert hits.same.all()
        assert not led.lookup(conn, keys, checks + (1 << 41), vid).same.any()
    on_disk = {p.name for p in (tmp_path / "q.ledger").iterdir()}
    assert on_disk == {r.name for r in runs}  # merged sources deleted


def test_a_run_no_committed_transaction_names_is_ignored_then_deleted(tmp_path):
    led, conn = _ledger(tmp_path)
    conn.execute("BEGIN IMMEDIATE")
    led.add(conn, _i64(1, 2), _i64(1, 2), vid=1, seq=1)
    conn.execute("ROLLBACK")  # a crash between writing the run and the commit
    assert len(os.listdir(tmp_path / "q.ledger")) == 1
    assert not led.lookup(conn, _i64(1, 2), _i64(1, 2), vid=1).same.any()
    folder = tmp_path / "q.ledger"
    fresh, stale = folder / "merge-fresh.tmp", folder / "merge-stale.tmp"
    fresh.write_bytes(b"x")  # a merge in progress elsewhere: left alone
    stale.write_bytes(b"x")
    old = time.time() - 2 * ledger_mod.STALE_TMP_S
    os.utime(stale, (old, old))
    conn.execute("BEGIN IMMEDIATE")
    led.add(conn, _i64(3), _i64(3), vid=1, seq=2)  # the next writer cleans up
    conn.execute("COMMIT")
    names = sorted(os.listdir(folder))
    assert names == sorted([led.runs(conn)[0].name, "merge-fresh.tmp"])
    assert led.lookup(conn, _i64(1, 3), _i64(1, 3), vid=1).same.tolist() == [False, True]


def test_fingerprints_are_stable_across_releases():
    """Fingerprints are kept on disk: the same uri must give the same value for ever."""
    keys, checks = fingerprints(pa.array(["", "at://did:plc:abc/app.bsky.feed.post/1"]))
    as_hex = [f"{int(k) & (2**64 - 1):016x}{int(c) & (2**64 - 1):016x}"
              for k, c in zip(keys, checks)]
    # XXH3-128 of no bytes, as published by xxHash; then a uri, as first recorded here.
    assert as_hex[0] == "99aa06d3014798d86001c324468d497f"
    assert (int(keys[1]), int(checks[1])) == (2601102743322156264, -5280016898719402917)


def test_a_forget_entry_cancels_earlier_entries_of_its_own_version_only(tmp_path, monkeypatch):
    """Clearing a queue forgets its posts under the version they were queued for; the same
    posts' entries under another version (a relabel, or labels already exported) stay."""
    monkeypatch.setattr(ledger_mod, "TIER_BASE", 2)
    led, conn = _ledger(tmp_path)

    write = functools.partial(_write, conn)

    write(led.add, _i64(1, 2, 3), _i64(1, 2, 3), 1, 1)
    write(led.add, _i64(1), _i64(1), 2, 2)          # post 1 also under version 2
    write(led.forget, _i64(1, 2), _i64(1, 2), 1, 3)  # posts 1 and 2 cleared from version 1
    hits = led.lookup(conn, _i64(1, 2, 3), _i64(1, 2, 3), vid=1)
    assert hits.same.tolist() == [False, False, True]
    assert hits.other.tolist() == [True, False, False]  # version 2 still knows post 1
    assert led.lookup(conn, _i64(1), _i64(1), vid=2).same.tolist() == [True]
    write(led.add, _i64(2), _i64(2), 1, 4)          # queued again after the clear
    for _ in range(2):  # before and after merging: the same answers
        hits = led.lookup(conn, _i64(1, 2, 3), _i64(1, 2, 3), vid=1)
        assert hits.same.tolist() == [False, True, True]
        assert hits.same_seq.tolist() == [-1, 4, 1]
        assert led.lookup(conn, _i64(1), _i64(1), vid=2).same.tolist() == [True]
        _merge_all(led, conn)


def test_one_post_cleared_twice_with_merges_between_is_forgotten_each_time(tmp_path,
                                                                         monkeypatch):
    """queue → forget → merge → queue again → merge → forget → merge: each forget cancels
    exactly the entries before it, also once they and it share one merged run."""
    monkeypatch.setattr(ledger_mod, "TIER_BASE", 1)
    monkeypatch.setattr(ledger_mod, "FANOUT", 2)
    led, conn = _ledger(tmp_path)

    write = functools.partial(_write, conn)

    def known() -> bool:
        return bool(led.lookup(conn, _i64(5), _i64(5), vid=1).same[0])

    write(led.add, _i64(5), _i64(5), 1, 1)
    write(led.forget, _i64(5), _i64(5), 1, 2)
    assert _merge_all(led, conn) and not known()
    write(led.add, _i64(5), _i64(5), 1, 3)
    _merge_all(led, conn)
    assert known()
    write(led.forget, _i64(5), _i64(5), 1, 4)
    _merge_all(led, conn)
    assert not known()
    write(led.add, _i64(5, 6), _i64(5, 6), 1, 5)
    _merge_all(led, conn)
    assert known()
    # the forgets and the entries they cancel ended up in one merged run
    assert any(((r.vids & ledger_mod.FORGET_BIT) != 0).sum() == 2 and (r.vids == 1).sum() >= 2
               for r in led.runs(conn))


def _one_run(tmp_path) -> tuple[Ledger, sqlite3.Connection, "os.PathLike"]:
    led, conn = _ledger(tmp_path)
    conn.execute("BEGIN IMMEDIATE")
    led.add(conn, _i64(1, 2, 3), _i64(1, 2, 3), vid=1, seq=1)
    conn.execute("COMMIT")
    [path] = (tmp_path / "q.ledger").iterdir()
    return led, conn, path


@pytest.mark.parametrize("damage, why", [
    (lambda p: p.write_bytes(p.read_bytes()[:40] + b"\x7f" + p.read_bytes()[41:]),
     "checksum does not match"),                                   # a key byte altered
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_bytes(p.read_bytes()[:-5]), "size"),       # truncated
    (lambda p: p.unlink(), "missing"),
    (lambda p: p.write_bytes(b"BFLEDG01" + p.read_bytes()[8:]), "earlier version"),
])
def test_a_damaged_run_file_is_named_with_the_way_out(tmp_path, damage, why):
    led, conn, path = _one_run(tmp_path)
    damage(path)
    fresh = Ledger(tmp_path / "q.ledger", "runs")
    with pytest.raises(ledger_mod.LedgerDamaged, match=why) as got:
        fresh.lookup(conn, _i64(1), _i64(1), vid=1)
    assert str(path) in str(got.value) and "--rebuild-ledger" in str(got.value)


def test_a_full_disk_during_a_merge_names_the_file_and_keeps_the_ledger(tmp_path,
                                                                      monkeypatch):
    monkeypatch.setattr(ledger_mod, "TIER_BASE", 1)
    led, conn = _ledger(tmp_path)
    for seq in range(1, 5):
        conn.execute("BEGIN IMMEDIATE")
        led.add(conn, _i64(seq), _i64(seq), vid=1, seq=seq)
        conn.execute("COMMIT")
    real = os.pwrite

    def full(fd, data, offset):
        if offset > 0:  # the header goes in first; the entries meet a full disk
            raise OSError(28, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(ledger_mod.os, "pwrite", full)
    sources = led.merge_candidates(conn)
    with pytest.raises(ledger_mod.LedgerWriteError, match="the disk is full") as got:
        led.write_merged([r for r in led.runs(conn) if r.name in sources])
    assert "ledger file" in str(got.value) and str(tmp_path / "q.ledger") in str(got.value)
    monkeypatch.setattr(ledger_mod.os, "pwrite", real)
    assert not list((tmp_path / "q.ledger").glob("*.tmp"))  # the half-written file is gone
    assert led.lookup(conn, _i64(1, 2, 3, 4), _i64(1, 2, 3, 4), vid=1).same.all()


def test_a_damaged_ledger_stops_the_enqueue_before_anything_and_rebuild_ledger_mends_it(
        tmp_path, capsys):
    """Through the CLI: one key byte altered in a run file (before: its posts silently
    counted as new and queued again). The enqueue — also the one-command form — stops with
    one line naming the file and the way out, queues nothing; ``--rebuild-ledger`` writes the
    ledger from the queue file and the output; the next enqueue queues nothing twice."""
    from jobs.backfill import main
    from tests.cli_helpers import write_config, write_posts
    from tests.pipeline_helpers import PLUGIN
    from tests.queue_helpers import NAME

    posts = write_posts(tmp_path, 600, days=2)
    cfg = write_config(tmp_path, {"type": PLUGIN}, posts=posts)
    enqueue = ["--config", str(cfg), "-r", "posts", "--add-to-queue", "-i", "g", "--quiet"]
    assert main(enqueue) == 0
    store = Store(tmp_path / "data", NAME)
    queued = store.status().pending_posts
    [run] = [p for p in (tmp_path / "data" / "queue" / f"{NAME}.ledger").iterdir()]
    raw = bytearray(run.read_bytes())
    raw[40] ^= 0xFF  # a byte of the first key
    run.write_bytes(bytes(raw))
    capsys.readouterr()
    for argv in (enqueue, enqueue + ["--run-integrations"]):
        assert main(argv) == 2
        err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
        assert len(err) == 1 and str(run) in err[0] and "checksum" in err[0], err
        assert "--rebuild-ledger" in err[0]
        assert store.status().pending_posts == queued
    assert main(["--config", str(cfg), "-i", "g", "--rebuild-ledger"]) == 0
    assert f"ledger rebuilt from the queue file and the output: {queued:,}" in \
        capsys.readouterr().out
    assert main(enqueue) == 0
    assert store.status().pending_posts == queued  # each post still once
    store.close()
