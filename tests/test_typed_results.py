"""Label columns travel typed, from the classifier stage to parquet: the first rows fix each
column's type, a later value that does not fit fails its post (retried, then dead-lettered),
and the whole output reads with pyarrow.dataset, pandas and DuckDB."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from actors.writer_actor import claim_runs, distinct_posts
from jobs.inference import run_inference
from queue_store import QueueStore, export_output
from queue_store.typed_rows import fit_rows, typed_columns
from tests.pipeline_helpers import NAME, enqueue, pipeline_config, queue_status

PLUGIN = "tests.plugins:OutputsInText"


def _posts(start: int, outputs: list[dict]) -> list[dict]:
    return [{"uri": f"at://typed/{start + i}", "text": f"post {start + i} |{json.dumps(out)}",
             "preprocessing_timestamp": f"2024-10-{1 + i % 2:02d}-12:00:00"}
            for i, out in enumerate(outputs)]


def test_a_block_keeps_the_first_values_type_and_fails_what_does_not_fit():
    names, arrays, bad = typed_columns([{"label": 1}, {"label": "x"}, None, {"label": 2.0},
                                        {"label": 2.5, "tags": [1]}])
    assert names == ["label", "tags"]
    assert arrays[0].type == pa.int64() and arrays[1].type == pa.list_(pa.int64())
    assert sorted(bad) == [1, 4] and "'label'" in bad[1]
    assert typed_columns([{"p": 1}, {"p": 0.5}])[1][0].type == pa.float64()  # no clash


def test_rows_that_do_not_fit_the_fixed_types_are_split_off():
    schema = pa.schema([("label", pa.int64()), ("tags", pa.list_(pa.int64()))])
    table = pa.table({"label": [1.0, 0.5, 3.0], "tags": [[1], [], None]})
    fitted, bad = fit_rows(table, schema)
    assert fitted.column("label").to_pylist() == [1, 3] and list(bad) == [1]
    assert fitted.schema.field("tags").type == pa.list_(pa.int64())


def test_a_result_delivered_twice_counts_once_and_runs_follow_claims():
    block = pa.table({"batch_id": [1, 1, 2, 2, 2], "lease_id": ["a", "a", "b", "b", "c"],
                      "batch_posts": [2, 2, 3, 3, 1], "uri": ["u1", "u2", "u3", "u3", "u4"]})
    runs = [(key, n, part.num_rows) for key, n, part in claim_runs(block)]
    assert runs == [((1, "a"), 2, 2), ((2, "b"), 3, 2), ((2, "c"), 1, 1)]
    assert distinct_posts(block.slice(2, 2)).column("uri").to_pylist() == ["u3"]


def test_complete_rows_is_fenced_and_counts_every_post_once(tmp_path, posts_factory):
    store = QueueStore(tmp_path, NAME)
    store.enqueue(posts_factory(3), batch_size=3)
    [b] = store.claim(1)
    rows = pa.Table.from_pylist([{**p, "label": v} for p, v in zip(b.posts[:2], [1, 2])])
    with pytest.raises(ValueError, match="lack"):
        store.complete_rows(b.batch_id, b.lease_id, rows.drop_columns(["text"]), [b.posts[2]])
    with pytest.raises(ValueError, match="account for each"):
        store.complete_rows(b.batch_id, b.lease_id, rows, [])
    with pytest.raises(ValueError, match="twice"):
        store.complete_rows(b.batch_id, b.lease_id, rows, [(b.posts[0], "again")])
    assert not store.complete_rows(b.batch_id, "stale-lease", rows, [(b.posts[2], "x")]).accepted
    res = store.complete_rows(b.batch_id, b.lease_id, rows, [(b.posts[2], "bad value")])
    assert (res.labelled, res.retried) == (2, 1)
    assert export_output(store, tmp_path / "out").rows == 2
    table = pads.dataset(tmp_path / "out", partitioning="hive").to_table()
    assert table.schema.field("label").type == pa.int64()


@pytest.mark.ray
@pytest.mark.slow
def test_types_fixed_by_the_first_export_hold_across_runs_and_readers(ray_session, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    import pandas as pd

    config = pipeline_config(tmp_path, {"type": PLUGIN}, batch_size=4)
    runs = [
        # run 1 fixes the types: label int64, tags list<int64>, note (no value yet) text
        [{"label": 1, "tags": [1, 2], "note": None}] * 8,
        # run 2: 0.5 and "x" into int64 and a nested list fail; 2.0, [] and None fit
        [{"label": 0.5}, {"label": 2, "tags": []}, {"label": "x"}, {"label": 2.0},
         {"label": 3, "tags": [[1]]}, {"label": None, "tags": None, "note": None}],
        # run 3: text fits the note column, an int does not
        [{"label": 4, "tags": [5], "note": "seen"}, {"label": 5, "note": 7}],
    ]
    start = 0
    for outputs in runs:
        enqueue(tmp_path, _posts(start, outputs), batch_size=4)
        start += len(outputs)
        summary = run_inference(config, NAME, quiet=True)
        assert summary.incomplete_batches == 0
    st = queue_status(tmp_path)
    assert (st.pending_posts, st.processing_posts) == (0, 0)
    store = QueueStore(tmp_path, NAME)
    dead = {d.uri: d.reason for d in store.dead_letters(limit=100)}
    store.close()
    bad = {"at://typed/8", "at://typed/10", "at://typed/12", "at://typed/15"}
    assert set(dead) == bad, dead
    assert "label" in dead["at://typed/8"] and "int64" in dead["at://typed/8"]
    assert "note" in dead["at://typed/15"]

    root = tmp_path / NAME
    table = pads.dataset(root, partitioning="hive").to_table()
    assert table.num_rows == 16 - len(bad)
    assert sorted(table.column("uri").to_pylist()) == sorted(
        f"at://typed/{i}" for i in range(16) if f"at://typed/{i}" not in bad)
    assert table.schema.field("label").type == pa.int64()
    assert table.schema.field("tags").type == pa.list_(pa.int64())
    assert table.schema.field("note").type == pa.string()
    by_uri = {r["uri"]: r for r in table.to_pylist()}
    assert by_uri["at://typed/11"]["label"] == 2 and by_uri["at://typed/9"]["tags"] == []
    assert by_uri["at://typed/14"]["note"] == "seen"
    frame = pd.read_parquet(root)
    assert len(frame) == table.num_rows and frame["label"].dropna().astype(int).sum() == 16
    con = duckdb.connect()
    got = con.execute(f"SELECT count(*), count(DISTINCT uri), sum(label) FROM read_parquet("
                      f"'{root}/*/*.parquet', hive_partitioning = true)").fetchone()
    assert got == (table.num_rows, table.num_rows, 16)
    types = {row[0]: row[1] for row in con.execute(
        f"DESCRIBE SELECT * FROM read_parquet('{root}/*/*.parquet', hive_partitioning = true)"
    ).fetchall()}
    assert types["label"] == "BIGINT" and types["tags"] == "BIGINT[]"
