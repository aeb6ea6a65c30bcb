"""Tests that each guard one promise a planted bug once slipped past (see issue 15):
heartbeats that really extend leases, parquet that is never visible half-written, a clear
that spares rows added after the export, and the writer's final export."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest

import queue_store.location as location
from tests.pipeline_helpers import run_inference
from jobs.stages.write_cache import write_cache
from tests.queue_helpers import Store, complete, export_output, posts_of
from tests.conftest import make_posts
from tests.pipeline_helpers import (NAME, PLUGIN, driver_command, output_uris, pipeline_config,
                                    version_of)

ROOT = Path(__file__).resolve().parents[1]


def _labelled(store: Store, n: int, start: int = 0) -> None:
    store.enqueue(make_posts(n, start=start, days=2), batch_size=n)
    [b] = store.claim(1)
    complete(store, b, {p["uri"]: {"label": 1} for p in posts_of(b)}, {})


def test_parquet_write_failing_part_way_leaves_nothing_visible(tmp_path, monkeypatch):
    """The labelled file of a completion dies half-written (a full disk): no partial file is
    left, staged or final, nothing is completed, and the completion can be made again."""
    store = Store(tmp_path, NAME)
    store.enqueue(make_posts(300, days=2), batch_size=300)
    [b] = store.claim(1)
    labels = {p["uri"]: {"label": 1} for p in posts_of(b)}
    real_write = location.pq.write_table

    def dies_half_way(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1" + b"\0" * 4096)  # some bytes, then the disk fills
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(location.pq, "write_table", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        complete(store, b, labels, out=tmp_path / "out")
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert files == []  # no partial file at the staged path, no temp file left
    assert store.status().processing_posts == 300  # nothing completed: still claimed
    monkeypatch.setattr(location.pq, "write_table", real_write)
    assert complete(store, b, labels, out=tmp_path / "out").accepted  # made again
    assert export_output(store, tmp_path / "out").rows == 300
    table = pads.dataset(tmp_path / "out", partitioning="hive").to_table()
    assert sorted(table.column("uri").to_pylist()) == sorted(
        p["uri"] for p in make_posts(300, days=2))


@pytest.mark.slow
def test_clear_after_export_spares_a_row_that_arrived_in_between(inprocess, tmp_path,
                                                                 monkeypatch):
    """The CLI's write-cache exports, then clears; a batch completed between the two (by a
    run still going) must stay in the output queue for the next export."""
    import jobs.stages.write_cache as inference

    store = Store(tmp_path, NAME)
    _labelled(store, 100)
    real_export = inference.export_output

    def export_then_a_late_batch(*args, **kwargs):
        stats = real_export(*args, **kwargs)
        _labelled(Store(tmp_path, NAME), 7, start=1000)  # lands after the export
        return stats

    monkeypatch.setattr(inference, "export_output", export_then_a_late_batch)
    summary = write_cache(pipeline_config(tmp_path), NAME, clear_queue=True)
    assert summary.exported_rows == 100
    st = store.status()
    assert st.output_rows_exported == 0 and st.output_rows_unexported == 7
    monkeypatch.setattr(inference, "export_output", real_export)
    write_cache(pipeline_config(tmp_path), NAME, clear_queue=True)
    assert len(output_uris(tmp_path)) == 107


@pytest.mark.slow
def test_final_export_writes_what_no_periodic_export_covered(inprocess, tmp_path):
    cfg = pipeline_config(tmp_path, batch_size=250)
    store = Store(tmp_path, NAME)
    store.enqueue(make_posts(1000), batch_size=250, config_hash=version_of(cfg))
    cfg.pipeline.export_rows = 100_000          # larger than the run
    cfg.pipeline.export_every_seconds = 3600    # and no timed export either
    summary = run_inference(cfg, NAME)
    uris = output_uris(tmp_path)
    assert len(uris) == len(set(uris)) == 1000 and summary.exported_rows == 1000
    assert store.status().output_rows_unexported == 0


@pytest.mark.slow
def test_heartbeat_keeps_a_long_batch_leased_while_another_run_polls(inprocess, ray_session,
                                                                     tmp_path):
    """One batch takes ~3x lease_seconds to classify. The run holding it must keep it
    (heartbeat), so a second run polling meanwhile never claims it and the first run's
    completion is accepted."""
    slow = pipeline_config(tmp_path, {"type": PLUGIN, "params": {"delay_s": 10.0}},
                           batch_size=100)
    slow.queue.lease_seconds = 3
    store = Store(tmp_path, NAME)
    store.enqueue(make_posts(100), batch_size=100, config_hash=version_of(slow))
    address = ray_session.get_runtime_context().gcs_address
    proc = subprocess.Popen(driver_command(slow, address, tmp_path / "slow.json"), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 120
    while not store.status().processing_posts:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    poller = slow  # the same command in a second process: it would claim the batch if free
    polls, leased = [], []
    while proc.poll() is None:  # keep trying to take the batch until the first run ends
        summary = run_inference(poller, NAME)
        polls.append(summary.claimed)
        leased.append(summary.leased_elsewhere)
        time.sleep(1.0)
    out, _ = proc.communicate()
    [line] = [x for x in out.splitlines() if x.startswith("SUMMARY ")]
    import json

    first = json.loads(line[len("SUMMARY "):])
    assert len(polls) >= 2 and set(polls) == {0}  # the poller never claimed the batch
    assert 100 in leased  # and it said the posts are held by another run
    assert first["labelled"] == 100 and first["stale_completions"] == 0
    uris = output_uris(tmp_path)
    assert len(uris) == len(set(uris)) == 100
