"""The seed flows from the command line, end to end on a small dataset."""
from __future__ import annotations

import json
import re

import pyarrow.dataset as pads
import pytest

from jobs.backfill import main
from tests.queue_helpers import Store, complete
from tests.cli_helpers import write_config, write_posts

pytestmark = [pytest.mark.slow]
NAME = "ml_inference_intergroup"
PLUGIN = {"type": "tests.plugins:KeywordClassifier"}


def _run(capsys, *argv, code: int = 0) -> str:
    got = main(list(argv))
    out = capsys.readouterr()
    assert got == code, out.err
    return out.out


def _valid_unique_uris(posts_dir) -> set[str]:
    table = pads.dataset(posts_dir, partitioning="hive").to_table()
    return {r["uri"] for r in table.to_pylist()
            if r["text"] and len(r["text"].strip()) >= 5
            and r["text"].strip().lower() not in ("null", "none", "nan")
            and r["preprocessing_timestamp"]}


def _parquet_uris(tmp_path) -> list[str]:
    return pads.dataset(tmp_path / "data" / NAME, partitioning="hive").to_table(
        columns=["uri"]).column("uri").to_pylist()


def test_stages_one_at_a_time_with_tiny_model(inprocess, tmp_path, capsys, tiny_models):
    posts = write_posts(tmp_path, 600, days=6)
    cfg = str(write_config(tmp_path, {"type": "hf_sequence_classification",
                                      "params": {"model": tiny_models["single"]}}))
    out = _run(capsys, "--config", cfg, "-r", "posts", "--add-to-queue", "-i", "g",
               "--start-date", "2024-10-02", "--end-date", "2024-10-02", "--quiet")
    assert "enqueued" in out
    st = Store(tmp_path / "data", NAME).status()
    assert 80 <= st.pending_posts <= 100  # one day of six (a few invalid/duplicate posts)
    _run(capsys, "--config", cfg, "-r", "posts", "--add-to-queue", "-i",
         "ml_inference_intergroup", "--quiet")  # the rest; day 2 is skipped as queued
    expected = _valid_unique_uris(posts)
    assert Store(tmp_path / "data", NAME).status().pending_posts == len(expected)
    out = _run(capsys, "--config", cfg, "-i", "g", "--run-integrations", "--quiet")
    assert "inference" in out and "hf_sequence_classification" in out
    out = _run(capsys, "--config", cfg, "--write-cache", NAME, "--clear-queue")
    uris = _parquet_uris(tmp_path)
    assert len(uris) == len(set(uris)) and set(uris) == expected
    st = Store(tmp_path / "data", NAME).status()
    assert st.output_rows_exported == st.output_rows_unexported == st.pending_posts == 0
    again = _run(capsys, "--config", cfg, "-r", "posts", "--add-to-queue", "-i", "g", "--quiet")
    assert "enqueued" not in again  # nothing new: everything is already in the parquet output
    done = int(re.search(r"skipped_known\s+(\d+)\n", again).group(1))
    repeats = int(re.search(r"skipped_duplicate\s+(\d+)\n", again).group(1))
    invalid = int(re.search(r"rejected_invalid\s+(\d+)\n", again).group(1))
    # each labelled post counts once as known; its repeats in the input as duplicates
    assert done == len(expected) and done + repeats + invalid == 600
    assert Store(tmp_path / "data", NAME).status().pending_posts == 0


def test_all_in_one_then_status_json_after_poison(inprocess, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    posts = write_posts(tmp_path, 300, days=2)
    day = posts / "partition_date=2024-10-01"
    pq.write_table(pa.table({"uri": ["poison-1"], "text": ["this is POISON text"],
                             "preprocessing_timestamp": ["2024-10-01-10:00:00"]}),
                   day / "part-poison.parquet")
    cfg = str(write_config(tmp_path, PLUGIN))
    assert main(["--config", cfg, "-r", "posts", "--add-to-queue", "-i", "g",
                 "--run-integrations", "--write-cache", "all", "--quiet"]) == 3
    err = capsys.readouterr().err
    assert "1 post(s) were dead-lettered in this run" in err and "--show-dead" in err
    status = json.loads(_run(capsys, "--config", cfg, "--queue-status", "--json"))[NAME]
    expected = _valid_unique_uris(posts)
    assert status["dead_posts"] == 1 and status["pending_posts"] == 0
    assert status["processing_posts"] == 0
    assert status["output_rows_exported"] == len(expected) - 1
    assert status["output_rows_unexported"] == 0
    assert set(_parquet_uris(tmp_path)) == expected - {"poison-1"}
    dead = _run(capsys, "--config", cfg, "--show-dead", "5")
    assert "poison-1" in dead and "POISON" in dead
    assert "1 dead post(s) back to pending" in _run(capsys, "--config", cfg, "--requeue-dead")
    assert "0 expired" in _run(capsys, "--config", cfg, "--reap-stale")


def test_clear_queue_keeps_rows_added_after_export(inprocess, tmp_path, capsys):
    write_posts(tmp_path, 200, days=1)
    cfg = str(write_config(tmp_path, PLUGIN))
    _run(capsys, "--config", cfg, "-r", "posts", "--add-to-queue", "-i", "g",
         "--run-integrations", "--quiet")
    store = Store(tmp_path / "data", NAME)
    store.enqueue([{"uri": "late-1", "text": "a late post about groups",
                    "preprocessing_timestamp": "2024-10-01"}])
    [b] = store.claim(1)
    complete(store, b, {"late-1": {"label": "x"}}, {})
    # The run already exported its rows; the late row arrived after that export.
    _run(capsys, "--config", cfg, "--write-cache", "g", "--clear-queue")
    st = store.status()
    assert st.output_rows_exported == 0 and st.output_rows_unexported == 0
    assert "late-1" in _parquet_uris(tmp_path)
