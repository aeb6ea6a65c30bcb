"""Export parsing: values come out exactly as written, in the order written."""
from __future__ import annotations

import pyarrow.dataset as pads

from queue_store import QueueStore, codec, export_output
from queue_store.export_types import strings_for_nulls
from queue_store.parquet_export import payloads_to_table
from tests.conftest import make_posts


def test_date_like_strings_stay_strings_in_written_order():
    rows = [codec.dumps({"uri": "a", "text": "hello there", "preprocessing_timestamp": "2024-10-01",
                         "label": "2024-01-01", "label_timestamp": "2026-11-29T20:00:00+00:00",
                         "reason": None, "prob": 1.0}),
            codec.dumps({"uri": "b", "text": "x\ny, z", "preprocessing_timestamp":
                         "2024-10-02-12:00:00", "label": "x", "label_timestamp": "2026-11-29",
                         "reason": None, "prob": 0.25})]
    table = payloads_to_table([codec.join_lines(rows), "[]"])
    assert table.column_names == ["uri", "text", "preprocessing_timestamp", "label",
                                  "label_timestamp", "reason", "prob"]
    assert table.to_pylist()[1] == {"uri": "b", "text": "x\ny, z",
                                    "preprocessing_timestamp": "2024-10-02-12:00:00",
                                    "label": "x", "label_timestamp": "2026-11-29",
                                    "reason": None, "prob": 0.25}
    assert str(table.schema.field("label").type) == "string"
    # A column with no value yet stays open in the chunk and is written as text.
    assert str(table.schema.field("reason").type) == "null"
    assert str(strings_for_nulls(table).schema.field("reason").type) == "string"


def test_export_round_trips_text_with_newlines_and_quotes(tmp_path):
    store = QueueStore(tmp_path, "g")
    posts = make_posts(3)
    posts[0]["text"] = 'line one\nline "two",\n{"not": "json"}'
    store.enqueue(posts)
    [b] = store.claim(1)
    store.complete(b.batch_id, b.lease_id,
                   {p["uri"]: codec.dumps({"label": "x"}) for p in b.posts[:2]} |
                   {b.posts[2]["uri"]: {"label": "y"}}, {})
    export_output(store, tmp_path / "out")
    got = {r["uri"]: r for r in pads.dataset(tmp_path / "out", partitioning="hive")
           .to_table().to_pylist()}
    assert got[posts[0]["uri"]]["text"] == posts[0]["text"]
    assert [got[p["uri"]]["label"] for p in posts] == ["x", "x", "y"]
