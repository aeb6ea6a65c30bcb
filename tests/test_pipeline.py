"""The Ray pipeline end to end, and under failures: nothing lost, nothing duplicated."""
from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from jobs.config import ConfigError
from tests.pipeline_helpers import run_inference
from jobs.stages.write_cache import write_cache
from tests.queue_helpers import Store, complete, posts_of
from tests.conftest import make_posts
from tests.pipeline_helpers import (NAME, PLUGIN, driver_command, enqueue, output_table,
                                    output_uris, pipeline_config, queue_status)

pytestmark = [pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


def test_end_to_end_tiny_model_each_post_once(ray_session, tmp_path, tiny_models):
    posts = make_posts(5000, days=4)
    posts[7]["text"] = "  "  # invalid: rejected at enqueue, counted
    cfg = pipeline_config(tmp_path, {"type": "hf_sequence_classification",
                                     "params": {"model": tiny_models["single"]}}, batch_size=500)
    assert enqueue(tmp_path, posts, config=cfg).enqueued_posts == 4999
    summary = run_inference(cfg, "g")
    uris = output_uris(tmp_path)
    assert len(uris) == len(set(uris)) == 4999
    table = output_table(tmp_path)
    assert "was_successfully_labeled" not in table.column_names  # failures never get here
    assert "reason" not in table.column_names
    assert table.schema.field("label_timestamp").type == pa.timestamp("us", tz="UTC")
    dates = Counter(table.column("partition_date").to_pylist())
    assert sorted(dates) == ["2024-10-01", "2024-10-02", "2024-10-03", "2024-10-04"]
    for row in table.slice(0, 50).to_pylist():
        assert row["partition_date"] == row["preprocessing_timestamp"][:10]
        assert row["run_id"] == summary.run_id
        assert row["classifier"] == "hf_sequence_classification" and "@" in row["model"]
    st = queue_status(tmp_path)
    assert st.pending_posts == st.processing_posts == st.dead_posts == 0
    assert st.output_rows_unexported == 0 and st.output_rows_exported == 4999
    assert summary.claimed == summary.labelled == summary.exported_rows == 4999
    assert summary.failed == summary.dead_lettered == summary.incomplete_batches == 0
    assert sum(summary.label_distribution.values()) == 4999
    saved = json.loads((tmp_path / "runs" / f"{summary.run_id}.json").read_text())
    assert saved["labelled"] == 4999 and saved["posts_per_s"] > 0
    print(f"\nend-to-end tiny model: {summary.posts_per_s} posts/s over {summary.duration_s}s")


def test_poison_post_dead_lettered_batch_mates_labelled(inprocess, tmp_path):
    posts = make_posts(1000)
    posts[123]["text"] = "this post is POISON for the model"
    cfg = pipeline_config(tmp_path)
    enqueue(tmp_path, posts, config=cfg)
    summary = run_inference(cfg, NAME)
    assert sorted(output_uris(tmp_path)) == sorted(p["uri"] for i, p in enumerate(posts)
                                                   if i != 123)
    store = Store(tmp_path, NAME)
    [dead] = store.dead_letters()
    assert dead.uri == posts[123]["uri"] and "POISON" in dead.reason and dead.attempt == 3
    assert (summary.failed, summary.retried, summary.dead_lettered) == (3, 2, 1)
    assert store.status().pending_posts == 0


def test_classifier_actor_killed_once_loses_nothing(ray_session, tmp_path):
    posts = make_posts(2000)
    marker = tmp_path / "crashed-once"
    cfg = pipeline_config(tmp_path, {"type": PLUGIN,
                                     "params": {"crash_marker_file": str(marker)}})
    enqueue(tmp_path, posts, config=cfg)
    summary = run_inference(cfg, NAME)
    assert marker.exists()  # the actor process really died
    uris = output_uris(tmp_path)
    assert len(uris) == len(set(uris)) == 2000
    assert summary.labelled == 2000 and summary.dead_lettered == 0


def test_max_records_per_run_claims_whole_batches(inprocess, tmp_path):
    enqueue(tmp_path, make_posts(3000), config=pipeline_config(tmp_path))  # 6 batches of 500
    summary = run_inference(pipeline_config(tmp_path), NAME, max_records_per_run=1400)
    assert summary.claimed == 1000 and summary.claimed_batches == 2
    assert summary.pending_left == 2000  # reported after the run
    st = queue_status(tmp_path)
    assert st.pending_posts == 2000 and st.pending_batches == 4 and st.processing_posts == 0
    rest = run_inference(pipeline_config(tmp_path), NAME)
    assert rest.claimed == 2000
    uris = output_uris(tmp_path)
    assert len(uris) == len(set(uris)) == 3000


def test_empty_queue_run_claims_nothing(inprocess, tmp_path):
    summary = run_inference(pipeline_config(tmp_path), NAME)
    assert (summary.claimed, summary.labelled, summary.exported_rows) == (0, 0, 0)
    assert output_uris(tmp_path) == []


def test_gpu_request_without_gpu_fails_fast(ray_session, tmp_path):
    if ray_session.cluster_resources().get("GPU"):
        pytest.skip("this cluster has a GPU")
    enqueue(tmp_path, make_posts(10))
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="num_gpus=1.*0 GPU"):
        run_inference(pipeline_config(tmp_path, num_gpus=1), NAME)
    assert time.monotonic() - t0 < 10
    assert queue_status(tmp_path).pending_posts == 10  # nothing claimed


def test_two_drivers_at_once_complete_each_batch_once(ray_session, tmp_path):
    """Two drivers on one queue at the same time. Which driver claims which batch depends on
    start-up timing (one that starts a second earlier may read every batch ahead), so each
    driver's budget is half the queue: both then must claim and complete work, and the
    fencing must still keep every post exactly once."""
    posts = make_posts(4000)
    cfg = pipeline_config(tmp_path, {"type": PLUGIN, "params": {"delay_s": 0.05}},
                          num_cpus=0.25)
    enqueue(tmp_path, posts, batch_size=250, config=cfg)
    address = ray_session.get_runtime_context().gcs_address
    procs = [subprocess.Popen(driver_command(cfg, address, tmp_path / f"cfg{i}.json",
                                             max_records=2000),
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    summaries = [json.loads(line[len("SUMMARY "):]) for out in outs
                 for line in out.splitlines() if line.startswith("SUMMARY ")]
    assert len(summaries) == 2
    assert sum(s["labelled"] for s in summaries) == 4000
    assert sum(s["claimed_batches"] for s in summaries) == 16
    assert [s["claimed_batches"] for s in summaries] == [8, 8]  # both did work
    assert all(s["labelled"] == 2000 and s["stale_completions"] == 0 for s in summaries)
    uris = output_uris(tmp_path)
    assert len(uris) == len(set(uris)) == 4000
    by_run = Counter(output_table(tmp_path).column("run_id").to_pylist())
    assert sorted(by_run.values()) == [2000, 2000]  # each driver's rows carry its run id


def test_write_cache_alone_exports_and_clears(ray_session, tmp_path):
    enqueue(tmp_path, make_posts(600))
    store = Store(tmp_path, NAME)
    for b in store.claim(10):
        complete(store, b, {p["uri"]: {"label": "x"} for p in posts_of(b)}, {})
    summary = write_cache(pipeline_config(tmp_path), "g", clear_queue=True)
    assert summary.exported_rows == 600
    assert sorted(output_uris(tmp_path)) == sorted(p["uri"] for p in make_posts(600))
    st = store.status()
    assert st.output_rows_exported == st.output_rows_unexported == 0
    assert pads.dataset(tmp_path / NAME, partitioning="hive").count_rows() == 600
