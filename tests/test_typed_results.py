"""Label columns travel typed, from the classifier stage to parquet: the first rows fix each
column's type, a later value that does not fit stops the run (a type clash is never
retried), and the whole output reads with pyarrow.dataset, pandas and DuckDB."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from actors.writer_actor import claim_runs, distinct_posts
from tests.pipeline_helpers import run_inference
from tests.queue_helpers import Store, export_output, posts_of
from queue_store.rows.typed import fit_rows, typed_columns
from queue_store.location import Location
from queue_store.models import Ack
from queue_store.staging import stage
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
                      "batch_posts": [2, 2, 3, 3, 1], "claim_posts": [2, 2, 3, 3, 1],
                      "uri": ["u1", "u2", "u3", "u3", "u4"]})
    runs = [(key, n, m, part.num_rows) for key, n, m, part in claim_runs(block)]
    assert runs == [((1, "a"), 2, 2, 2), ((2, "b"), 3, 3, 2), ((2, "c"), 1, 1, 1)]
    assert distinct_posts(block.slice(2, 2)).column("uri").to_pylist() == ["u3"]


def test_complete_is_fenced_and_counts_every_post_once(tmp_path, posts_factory):
    store = Store(tmp_path, NAME)
    store.enqueue(posts_factory(3), batch_size=3)
    [b] = store.claim(1)
    posts = posts_of(b)
    rows = pa.Table.from_pylist([{**p, "label": v} for p, v in zip(posts[:2], [1, 2])])
    def ack(lease_id=b.lease_id, **kw):
        return Ack(batch_id=b.batch_id, lease_id=lease_id, **kw)
    staged, _ = stage(store, Location.of(tmp_path / "out"), "tests", [ack()], [rows])
    with pytest.raises(ValueError, match="account for each"):
        store.complete([ack(labelled=2)], staged)
    with pytest.raises(ValueError, match="the staged file holds 2"):
        store.complete([ack(labelled=1, failed=[(posts[1], "x"), (posts[2], "x")])], staged)
    with pytest.raises(ValueError, match="twice"):
        store.complete([ack(failed=[(posts[0], "x"), (posts[0], "again"), (posts[2], "x")])])
    assert not store.complete([ack("stale-lease", labelled=2, failed=[(posts[2], "x")])],
                              staged).accepted
    res = store.complete([ack(labelled=2, failed=[(posts[2], "bad value")])], staged)
    assert (res.labelled, res.retried) == (2, 1)
    assert export_output(store, tmp_path / "out").rows == 2
    table = pads.dataset(tmp_path / "out", partitioning="hive").to_table()
    assert table.schema.field("label").type == pa.int64()


@pytest.mark.slow
def test_types_fixed_by_the_first_export_hold_and_a_clash_stops_the_run(inprocess, tmp_path):
    """Runs 1–2 fix and then fill the output's types (values that fit are cast); run 3 brings
    text into the integer label column (the writer's check) and run 4 mixes types within one
    classify call (the stage's check): each stops with exit 2 and one line naming the
    column and both types — nothing retried, dead-lettered or written, claims handed back.
    The whole output reads with pyarrow, pandas and DuckDB."""
    duckdb = pytest.importorskip("duckdb")
    import pandas as pd

    from jobs.stages.errors import RunStopped

    config = pipeline_config(tmp_path, {"type": PLUGIN}, batch_size=4)
    runs = [
        # run 1 fixes the types: label int64, tags list<int64>, note (no value yet) text
        [{"label": 1, "tags": [1, 2], "note": None}] * 8,
        # run 2: 2.0 (with 2 in its call), [] and None fit; text fits the note column
        [{"label": 2, "tags": []}, {"label": 2.0}, {"label": None, "tags": None, "note": None},
         {"label": 3, "tags": [3]}, {"label": 4, "tags": [5], "note": "seen"},
         {"label": 5, "note": "again"}],
    ]
    start = 0
    for outputs in runs:
        enqueue(tmp_path, _posts(start, outputs), batch_size=4, config=config)
        start += len(outputs)
        summary = run_inference(config, NAME, quiet=True)
        assert summary.incomplete_batches == 0 and summary.labelled == len(outputs)
    clashes = {"text into the integer column": [{"label": "x"}] * 4,
               "two types in one call": [{"label": 6}, {"label": "y"}] * 2}
    for what, outputs in clashes.items():
        enqueue(tmp_path, _posts(start, outputs), batch_size=4, config=config)
        start += len(outputs)
        with pytest.raises(RunStopped) as stopped:
            run_inference(config, NAME, quiet=True)
        message, summary = str(stopped.value), stopped.value.summary
        assert stopped.value.exit_code == 2, what
        assert "'label'" in message and "int64" in message and "string" in message, message
        if what == "text into the integer column":  # the way out: another place
            assert "another name" in message and "data_dir" in message, message
        assert summary.retried == summary.failed == summary.dead_lettered == 0, what
        st = queue_status(tmp_path)
        assert (st.pending_posts, st.processing_posts, st.dead_posts) == (len(outputs), 0, 0)
        store = Store(tmp_path, NAME)  # the next clash is a new run: clear this one
        store.conn.execute(f"DELETE FROM {store.tables['input']}")
        store.close()

    root = tmp_path / NAME
    table = pads.dataset(root, partitioning="hive").to_table()
    assert table.num_rows == 14
    assert table.schema.field("label").type == pa.int64()
    assert table.schema.field("tags").type == pa.list_(pa.int64())
    assert table.schema.field("note").type == pa.string()
    by_uri = {r["uri"]: r for r in table.to_pylist()}
    assert by_uri["at://typed/9"]["label"] == 2 and by_uri["at://typed/8"]["tags"] == []
    assert by_uri["at://typed/12"]["note"] == "seen"
    frame = pd.read_parquet(root)
    assert len(frame) == table.num_rows and frame["label"].dropna().astype(int).sum() == 24
    con = duckdb.connect()
    got = con.execute(f"SELECT count(*), count(DISTINCT uri), sum(label) FROM read_parquet("
                      f"'{root}/*/*.parquet', hive_partitioning = true)").fetchone()
    assert got == (14, 14, 24)
    types = {row[0]: row[1] for row in con.execute(
        f"DESCRIBE SELECT * FROM read_parquet('{root}/*/*.parquet', hive_partitioning = true)"
    ).fetchall()}
    assert types["label"] == "BIGINT" and types["tags"] == "BIGINT[]"
