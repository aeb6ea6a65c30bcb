"""Post validation: every rejected post keeps the reason it was rejected for."""
from __future__ import annotations

import pyarrow as pa
import pytest

from queue_store.rows.validation import as_post_table, split_valid


def _reasons(rows: list[tuple]) -> dict:
    table = pa.table({"uri": [r[0] for r in rows], "text": [r[1] for r in rows],
                      "preprocessing_timestamp": [r[2] for r in rows]})
    return dict(split_valid(as_post_table(table))[1])


@pytest.mark.parametrize("ts,ok", [
    ("2024-10-01-12:00:00", True), ("2024-10-01", True), ("2024-10-01T12:00:00Z", True),
    ("2024-02-29T23:59:59.250+02:00", True), ("2024-10-01 08:30", True),
    ("2024-13-45-99:99:99", False), ("2024-02-30-10:00:00", False), ("2023-02-29", False),
    ("2024-10-01T24:00:00", False), ("2024-10-01-12:61:00", False), ("20241001", False),
    ("2024-10-01 and then some", False),
])
def test_timestamps_must_be_real_dates_and_times(ts, ok):
    reasons = _reasons([("a", "a post long enough", ts)])
    assert (reasons == {}) is ok, reasons
    if not ok:
        assert reasons == {"a": "bad timestamp"}


@pytest.mark.parametrize("n", [1, 5, 50])
def test_whitespace_only_text_of_any_length_is_empty(n):
    assert _reasons([("a", " " * n, "2024-10-01"), ("b", "\t\n " * n, "2024-10-01")]) == {
        "a": "empty text", "b": "empty text"}


def test_text_and_uri_must_be_strings():
    table = pa.table({"uri": ["a", "b"], "text": [12345, 678910],
                      "preprocessing_timestamp": ["2024-10-01", "2024-10-01"]})
    assert dict(split_valid(as_post_table(table))[1]) == {"a": "text is not a string",
                                                         "b": "text is not a string"}
    table = pa.table({"uri": [1, 2], "text": ["a post long enough"] * 2,
                      "preprocessing_timestamp": ["2024-10-01"] * 2})
    valid, invalid, _, _ = split_valid(as_post_table(table))
    assert valid.num_rows == 0 and invalid == [(None, "uri is not a string")] * 2
