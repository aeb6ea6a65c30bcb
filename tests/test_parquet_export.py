"""Export: output rows come back exactly as the classifier stage typed them, in the order
written — nothing is parsed or inferred on the way to parquet."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.dataset as pads

from tests.queue_helpers import Store, complete, export_output
from queue_store.rows.column_types import strings_for_nulls
from tests.conftest import make_posts


def test_values_round_trip_exactly_in_written_order(tmp_path):
    """Date-like text stays text, text with newlines and quotes stays whole, a column with
    no value yet is written as text, and columns keep the order the classifier gave them."""
    store = Store(tmp_path, "g")
    posts = make_posts(3)
    posts[0]["text"] = 'line one\nline "two",\n{"not": "json"}'
    store.enqueue(posts)
    [b] = store.claim(1)
    complete(store, b, {posts[0]["uri"]: {"label": "2024-01-01", "note": None, "prob": 1.0},
                        posts[1]["uri"]: {"label": "x", "note": None, "prob": 0.25},
                        posts[2]["uri"]: {"label": "y", "note": None, "prob": 0.5}})
    export_output(store, tmp_path / "out")
    table = pads.dataset(tmp_path / "out", partitioning="hive").to_table()
    assert table.column_names[:6] == ["uri", "text", "preprocessing_timestamp", "label",
                                      "note", "prob"]
    got = {r["uri"]: r for r in table.to_pylist()}
    assert got[posts[0]["uri"]]["text"] == posts[0]["text"]
    assert [got[p["uri"]]["label"] for p in posts] == ["2024-01-01", "x", "y"]
    assert table.schema.field("label").type == pa.string()
    assert table.schema.field("note").type == pa.string()  # no value yet: text from now on
    assert store.export_schema().field("note").type == pa.string()


def test_an_open_column_is_written_as_text():
    table = pa.table({"reason": pa.nulls(2), "tags": pa.array([[], []], pa.list_(pa.null()))})
    fixed = strings_for_nulls(table)
    assert fixed.schema.field("reason").type == pa.string()
    assert fixed.schema.field("tags").type == pa.list_(pa.string())
