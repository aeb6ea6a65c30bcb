"""Vectorised post validation: one pass of Arrow compute kernels per record batch.

Per-post pydantic objects would cost more than the whole enqueue; the rules here are the
DESIGN.md invariant-1 rules, applied column-wise, and each rejected post keeps its reason.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from queue_store.rows.shapes import POST_COLUMNS

PLACEHOLDER_TEXTS = ["null", "none", "nan"]
MIN_TEXT_CHARS = 5
# The seed tool's ``YYYY-MM-DD-HH:MM:SS`` or ISO 8601 (date, optional time, fraction, zone);
# the ranges of hours, minutes and seconds are in the pattern, the day's in ``_real_day``.
_TIME = r"([01]\d|2[0-3]):[0-5]\d"
_TIMESTAMP = (rf"^\d{{4}}-\d{{2}}-\d{{2}}(-{_TIME}:[0-5]\d|([T ]{_TIME}(:[0-5]\d(\.\d+)?)?"
              rf"(Z|[+-]{_TIME.replace(':', ':?')})?)?)$")

# Checked in this order; a post gets the first reason that applies.
REASONS = (
    "uri is not valid UTF-8",
    "text is not valid UTF-8",
    "timestamp is not valid UTF-8",
    "missing uri",
    "uri is not a string",
    "text is not a string",
    "empty text",
    "placeholder text",
    "text under 5 characters",
    "missing timestamp",
    "bad timestamp",
    "duplicate uri",
)


# A column ``as_post_table`` adds when some values are not valid UTF-8: the reason per row.
BAD_BYTES = "__bad_bytes"


def as_post_table(posts: Any) -> pa.Table:
    """Accept a pyarrow Table/RecordBatch, a pandas DataFrame or an iterable of dicts.

    Text columns of any Arrow text type (dictionary-encoded, large, view) become ``string``;
    a value that is not valid UTF-8 becomes null and its row's reason goes to ``BAD_BYTES``
    (only present when some row has one), so one bad byte rejects one post."""
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
    columns = {c: _as_string(table.column(c)) for c in POST_COLUMNS}
    bad = table.column(BAD_BYTES) if BAD_BYTES in table.column_names else None  # found before
    for name, what in zip(POST_COLUMNS, ("uri", "text", "timestamp")):
        if not pa.types.is_string(columns[name].type):
            continue
        mask = _invalid_utf8(columns[name])
        if mask is None:
            continue
        columns[name] = _null_where(columns[name], mask)
        why = pa.array(np.where(mask, f"{what} is not valid UTF-8", None), pa.string())
        bad = why if bad is None else pc.coalesce(bad, why)
    if bad is not None:
        columns[BAD_BYTES] = bad
    return pa.table(columns)


def is_text_type(typ: pa.DataType) -> bool:
    """A column type that holds text (or nothing at all): any Arrow string type, or a
    dictionary of strings (pandas ``category`` columns read back)."""
    if pa.types.is_dictionary(typ):
        return is_text_type(typ.value_type)
    return (pa.types.is_string(typ) or pa.types.is_large_string(typ)
            or pa.types.is_string_view(typ) or pa.types.is_null(typ))


def _as_string(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Text columns as ``string``; any other type stays as it is (and is rejected)."""
    if pa.types.is_string(col.type):
        return col
    if pa.types.is_null(col.type):
        return pa.chunked_array([pa.nulls(len(col), pa.string())])
    if is_text_type(col.type):
        return pc.cast(col, pa.string())
    return col


def _invalid_utf8(col: pa.ChunkedArray) -> np.ndarray | None:
    """Which values are not valid UTF-8 (None when all are: one C++ pass, the usual case)."""
    try:
        col.validate(full=True)
        return None
    except pa.ArrowInvalid:
        pass
    return np.array([value is not None and not _decodes(value)
                     for value in _as_bytes(col).to_pylist()], dtype=bool)


def _decodes(value: bytes) -> bool:
    try:
        value.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _as_bytes(col: pa.ChunkedArray) -> pa.Array:
    """The column's values as binary, unvalidated (one array)."""
    return pa.concat_arrays([c.view(pa.binary()) for c in col.chunks]) if col.num_chunks \
        else pa.array([], pa.binary())


def _null_where(col: pa.ChunkedArray, mask: np.ndarray) -> pa.ChunkedArray:
    cleaned = pc.if_else(pa.array(mask), pa.scalar(None, pa.binary()), _as_bytes(col))
    return pa.chunked_array([cleaned.view(pa.string())])


def _flags(n: int, value: bool) -> pa.Array:
    return pa.array(np.full(n, value, dtype=bool))


def _real_day(ts: pa.ChunkedArray) -> pa.ChunkedArray:
    """True where the first ten characters are a calendar date (Arrow's strptime rolls
    2024-02-30 over to March, so the date must also print back unchanged)."""
    day = pc.utf8_slice_codeunits(ts, 0, 10)
    parsed = pc.strptime(day, format="%Y-%m-%d", unit="s", error_is_null=True)
    return pc.fill_null(pc.equal(pc.strftime(parsed, format="%Y-%m-%d"), day), False)


def reason_codes(table: pa.Table) -> pa.Array | None:
    """Index into ``REASONS`` per post (null for a valid post), or None when all are valid."""
    n = len(table)
    uri, text, ts = (table.column(c) for c in POST_COLUMNS)
    uri_typed, text_typed = is_text_type(uri.type), is_text_type(text.type)
    bytes_bad = table.column(BAD_BYTES) if BAD_BYTES in table.column_names else None
    # A column of another type fails every row with its own reason; the other checks then
    # run on an empty stand-in.
    uri = uri if uri_typed else pa.chunked_array([pa.nulls(n, pa.string())])
    text = text if text_typed else pa.chunked_array([pa.nulls(n, pa.string())])
    ts = ts if is_text_type(ts.type) else pa.chunked_array([pa.nulls(n, pa.string())])
    stripped = pc.utf8_trim_whitespace(pc.fill_null(text, ""))
    n_chars = pc.utf8_length(stripped)
    ts_text = pc.fill_null(ts, "")
    checks: list = [
        *(_flags(n, False) if bytes_bad is None else
          pc.fill_null(pc.equal(bytes_bad, f"{what} is not valid UTF-8"), False)
          for what in ("uri", "text", "timestamp")),
        pc.equal(pc.utf8_length(pc.fill_null(uri, "")), 0) if uri_typed
        else _flags(n, False),
        _flags(n, not uri_typed),
        _flags(n, not text_typed),
        pc.equal(n_chars, 0),
        pc.is_in(pc.utf8_lower(stripped), value_set=pa.array(PLACEHOLDER_TEXTS)),
        pc.less(n_chars, MIN_TEXT_CHARS),
        pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(ts_text)), 0),
        pc.invert(pc.and_(pc.match_substring_regex(ts_text, _TIMESTAMP), _real_day(ts_text))),
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
    table = table.select(list(POST_COLUMNS))
    if codes is None:
        return table, []
    bad = pc.is_valid(codes)
    rejected = table.filter(bad)
    rejected_codes = codes.filter(bad).to_pylist()
    uris = (rejected.column("uri").to_pylist() if is_text_type(rejected.column("uri").type)
            else [None] * rejected.num_rows)
    invalid = [(u, REASONS[c]) for u, c in zip(uris, rejected_codes)]
    return table.filter(pc.invert(bad)), invalid
