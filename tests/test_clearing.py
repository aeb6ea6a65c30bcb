"""Clearing queues through the CLI: what will be deleted is said first and confirmed (or
``--yes``), a refused or impossible confirmation deletes nothing, a queue leased by a live run
is not cleared, and cleared posts can be queued again (the ledger forgets them)."""
from __future__ import annotations

import io

import pytest

from jobs.backfill import main
from jobs.config import load_config
from tests.queue_helpers import NAME, Store, complete, export_output, input_uris, posts_of, queued_uris
from queue_store.lease_holder import LeaseHolder
from tests.cli_helpers import write_config, write_posts
from tests.pipeline_helpers import PLUGIN


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _counts(store) -> dict:
    """What the queue holds (not its bytes on disk, which reads and checkpoints move)."""
    return store.status().model_dump(exclude={"file_bytes", "ledger_bytes"})


def _half_done(tmp_path):
    """Posts enqueued through the CLI; 4 batches labelled, 2 of them exported; a dead
    letter; the rest pending. Returns (config, posts, store)."""
    posts = write_posts(tmp_path, 1000, days=1)
    cfg = write_config(tmp_path, {"type": PLUGIN}, posts=posts)
    assert main(["--config", str(cfg), "-r", "posts", "--add-to-queue", "-i", "g",
                 "--quiet"]) == 0
    store = Store(tmp_path / "data", NAME, max_attempts=1)
    version = load_config(str(cfg)).integrations[NAME].classifier.config_hash
    for i in range(4):
        [b] = store.claim(config_hash=version)
        poisoned = posts_of(b)[:1] if i == 0 else []
        complete(store, b, {p["uri"]: {"label": "x"} for p in posts_of(b)[len(poisoned):]},
                 {p["uri"]: "poison" for p in poisoned})
        if i == 1:
            export_output(store, tmp_path / "data" / NAME)
    return cfg, posts, store


def test_cleared_queues_are_gone_and_their_posts_can_be_queued_again(tmp_path, capsys):
    cfg, posts, store = _half_done(tmp_path)
    before = store.status()
    assert before.output_rows_exported and before.output_rows_unexported and before.dead_posts
    capsys.readouterr()
    assert main(["--config", str(cfg), "--clear-input-queues", "--clear-output-queues",
                 "--yes"]) == 0
    said = capsys.readouterr().out
    assert "NOT YET EXPORTED (their labels are lost)" in said and "cleared" in said
    st = store.status()
    assert (st.pending_posts, st.dead_posts, st.output_rows_exported,
            st.output_rows_unexported) == (0, 0, 0, 0)
    assert main(["--config", str(cfg), "-r", "posts", "--add-to-queue", "-i", "g",
                 "--quiet"]) == 0
    again = store.status().pending_posts
    # pending posts, the dead letter and the unexported labels are queued again; the
    # exported ones are not (their labels are in parquet)
    assert again == before.pending_posts + before.dead_posts + before.output_rows_unexported
    assert len(queued_uris(store, input_uris(posts))) > 900
    store.close()


@pytest.mark.parametrize("answer", ["no\n", None])
def test_a_refused_or_impossible_confirmation_deletes_nothing(tmp_path, capsys, monkeypatch,
                                                              answer):
    cfg, _, store = _half_done(tmp_path)
    before = _counts(store)
    monkeypatch.setattr("sys.stdin", _Terminal(answer) if answer else io.StringIO(""))
    code = main(["--config", str(cfg), "--clear-input-queues", "--clear-output-queues"])
    captured = capsys.readouterr()
    if answer:  # a person said no
        assert code == 0 and "type yes" in captured.out and "nothing was deleted" in captured.out
    else:  # no terminal, no --yes
        assert code == 2 and "pass --yes" in captured.err
    assert _counts(store) == before
    store.close()


def test_a_queue_leased_by_a_live_run_is_not_cleared(tmp_path, capsys):
    cfg, _, store = _half_done(tmp_path)
    version = load_config(str(cfg)).integrations[NAME].classifier.config_hash
    store.claim(owner=LeaseHolder.this_process("g-live-run").encode(), config_hash=version)
    before = _counts(store)
    assert main(["--config", str(cfg), "--clear-input-queues", "--yes"]) == 2
    err = capsys.readouterr().err
    assert "leased by a live run (run g-live-run (pid" in err
    assert _counts(store) == before
    store.close()


def test_a_queue_leased_by_a_run_that_died_is_cleared(tmp_path, capsys):
    """The lease's holder is gone (SIGKILL): its claims are taken back first, so the clear
    goes on instead of calling a dead run live."""
    import subprocess
    import sys
    import time

    cfg, _, store = _half_done(tmp_path)
    version = load_config(str(cfg)).integrations[NAME].classifier.config_hash
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    holder = LeaseHolder(host=LeaseHolder.this_process().host, pid=gone.pid,
                         started=time.time(), run_id="g-dead-run")
    gone.wait()
    store.claim(owner=holder.encode(), config_hash=version, lease_seconds=3600)
    assert store.status().processing_posts
    assert main(["--config", str(cfg), "--clear-input-queues", "--yes"]) == 0
    assert "live run" not in capsys.readouterr().err
    st = store.status()
    assert st.pending_posts == st.processing_posts == st.dead_posts == 0
    store.close()


def test_bypass_write_clears_the_output_without_writing_it(tmp_path, capsys):
    cfg, _, store = _half_done(tmp_path)
    files = sorted((tmp_path / "data" / NAME).rglob("*.parquet"))
    staged = tmp_path / "data" / ".staging" / NAME  # labels recorded, never published
    assert list(staged.rglob("*.parquet"))
    assert main(["--config", str(cfg), "--write-cache", "all", "--clear-queue",
                 "--bypass-write", "--yes"]) == 0
    st = store.status()
    assert st.output_rows_unexported == st.output_rows_exported == 0
    assert sorted((tmp_path / "data" / NAME).rglob("*.parquet")) == files  # nothing written
    assert list(staged.rglob("*.parquet")) == []  # their labels are gone, as said
    store.close()


def test_bypass_write_with_no_terminal_to_ask_is_refused_before_anything(tmp_path, capsys):
    """Refused like any other preflight problem: one line, no banner or plan printed first,
    nothing cleared."""
    cfg, _, store = _half_done(tmp_path)
    before = _counts(store)
    capsys.readouterr()
    assert main(["--config", str(cfg), "--write-cache", "all", "--clear-queue",
                 "--bypass-write"]) == 2
    got = capsys.readouterr()
    assert got.out == "" and got.err.splitlines() == [
        "error: clearing asks for confirmation and there is no terminal to ask on: pass "
        "--yes to clear (nothing was deleted)"], got
    assert _counts(store) == before
    store.close()


def test_clearing_empty_queues_says_so(tmp_path, capsys):
    """Nothing queued any more: the clear says it cleared nothing (it printed a bare
    ``cleared `` before)."""
    cfg, _, store = _half_done(tmp_path)
    assert main(["--config", str(cfg), "--clear-input-queues", "--clear-output-queues",
                 "--yes"]) == 0
    capsys.readouterr()
    assert main(["--config", str(cfg), "--clear-input-queues", "--yes"]) == 0
    said = capsys.readouterr().out.splitlines()
    assert f"{NAME}: cleared nothing (the queue was empty)" in said, said
    store.close()
