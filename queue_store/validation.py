"""Vectorised post validation: one pass of Arrow compute kernels per record batch.

Per-post pydantic objects would cost more than the whole enqueue; the rules here are the
DESIGN.md invariant-1 rules, applied column-wise, and each rejected post keeps its reason.
"""
from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from queue_store.models import Post

POST_COLUMNS = tuple(Post.model_fields)  # ("uri", "text", "preprocessing_timestamp")
PLACEHOLDER_TEXTS = ["null", "none", "nan"]
MIN_TEXT_CHARS = 5
_DATE_PREFIX = r"^\d{4}-\d{2}-\d{2}"

# Checked in this order; a post gets the first reason that applies.
REASONS = (
    "missing uri",
    "empty text",
    "placeholder text",
    "text under 5 characters",
    "missing timestamp",
    "bad timestamp",
    "duplicate uri",
)


def as_post_table(posts: Any) -> pa.Table:
    """Accept a pyarrow Table/RecordBatch, a pandas DataFrame or an iterable of dicts."""
    if isinstance(posts, pa.RecordBatch):
        table = pa.Table.from_batches([posts])
    elif isinstance(posts, pa.Table):
        table = posts
    elif hasattr(posts, "to_dict") and hasattr(posts, "columns"):  # pandas, without importing it
        table = pa.Table.from_pandas(posts, preserve_index=False)
    else:
        rows = list(posts) if not isinstance(posts, list) else posts
        table = pa.Table.from_pylist(rows) if rows else pa.table({c: pa.array([], pa.string())
                                                                  for c in POST_COLUMNS})
    missing = [c for c in POST_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"posts are missing column(s) {missing}; need {list(POST_COLUMNS)}")
    return pa.table({c: _as_string(table.column(c)) for c in POST_COLUMNS})


def _as_string(col: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_string(col.type):
        return col
    if pa.types.is_null(col.type):
        return pa.chunked_array([pa.nulls(len(col), pa.string())])
    return pc.cast(col, pa.string())


def reason_codes(table: pa.Table) -> pa.Array | None:
    """Index into ``REASONS`` per post (null for a valid post), or None when all are valid."""
    uri, text, ts = (table.column(c) for c in POST_COLUMNS)
    stripped = pc.utf8_trim_whitespace(pc.fill_null(text, ""))
    n_chars = pc.utf8_length(stripped)
    checks: list = [
        pc.equal(pc.utf8_length(pc.fill_null(uri, "")), 0),
        pc.equal(n_chars, 0),
        pc.is_in(pc.utf8_lower(stripped), value_set=pa.array(PLACEHOLDER_TEXTS)),
        pc.less(n_chars, MIN_TEXT_CHARS),
        pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(pc.fill_null(ts, ""))), 0),
        pc.invert(pc.match_substring_regex(pc.fill_null(ts, ""), _DATE_PREFIX)),
    ]
    # Duplicates are rare: a cheap distinct count decides whether the costly mask is needed.
    if len(pc.unique(uri)) != len(uri):
        checks.append(pc.invert(_first_occurrence(uri)))
    any_bad = checks[0]
    for failed in checks[1:]:
        any_bad = pc.or_(any_bad, failed)
    if not pc.any(any_bad).as_py():
        return None
    code = pa.nulls(len(table), pa.int8())
    # Walk the rules last-to-first so the first matching rule wins.
    for idx, failed in reversed(list(enumerate(checks))):
        code = pc.if_else(failed, pa.scalar(idx, pa.int8()), code)
    return code.combine_chunks() if isinstance(code, pa.ChunkedArray) else code


def _first_occurrence(uri: pa.ChunkedArray) -> pa.Array:
    """True where a uri is seen for the first time in this table."""
    n = len(uri)
    idx = pa.table({"uri": uri, "i": pa.array(range(n), pa.int64())})
    firsts = idx.group_by("uri", use_threads=False).aggregate([("i", "min")]).column("i_min")
    mask = pc.is_in(idx.column("i"), value_set=firsts)
    return mask


def split_valid(table: pa.Table) -> tuple[pa.Table, list[tuple[str | None, str]]]:
    """Return (valid posts, [(uri, reason)] for the rejected ones)."""
    codes = reason_codes(table)
    if codes is None:
        return table, []
    bad = pc.is_valid(codes)
    rejected = table.filter(bad)
    rejected_codes = codes.filter(bad).to_pylist()
    invalid = [(u, REASONS[c]) for u, c in zip(rejected.column("uri").to_pylist(), rejected_codes)]
    return table.filter(pc.invert(bad)), invalid
