"""Vectorised post validation: one pass of Arrow compute kernels per record batch.

Per-post pydantic objects would cost more than the whole enqueue; the rules here are the
DESIGN.md invariant-1 rules, applied column-wise, and each rejected post keeps its reason.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from queue_store.fingerprint import fingerprints
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


def _real_day(ts: pa.ChunkedArray) -> pa.Array:
    """True where the first ten characters are a calendar date (Arrow's strptime rolls
    2024-02-30 over to March, so the date must also print back unchanged). Checked once per
    distinct day: a batch holds a handful."""
    days = pc.dictionary_encode(pc.utf8_slice_codeunits(ts, 0, 10)).combine_chunks()
    parsed = pc.strptime(days.dictionary, format="%Y-%m-%d", unit="s", error_is_null=True)
    ok = pc.fill_null(pc.equal(pc.strftime(parsed, format="%Y-%m-%d"), days.dictionary), False)
    return pc.fill_null(pc.take(ok, days.indices), False)


def _short_texts(text: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, chars)``: the texts that might have under ``MIN_TEXT_CHARS`` characters once
    surrounding white space is trimmed, and their trimmed character counts. Every other text
    is long enough. Read from the raw UTF-8 bytes: a text of 4×MIN_TEXT_CHARS bytes or more
    that begins and ends with a byte that is neither ASCII white space nor part of a
    multi-byte character has at least MIN_TEXT_CHARS characters; only the rest are trimmed."""
    arr = pc.fill_null(text, "").combine_chunks()
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], np.int32, n + 1, arr.offset * 4)
    data = arr.buffers()[2]
    data = np.frombuffer(data, np.uint8) if data is not None else np.zeros(1, np.uint8)
    start, end = offsets[:-1], offsets[1:]
    maybe = (end - start) < 4 * MIN_TEXT_CHARS
    sure = np.flatnonzero(~maybe)
    first, last = data[start[sure]], data[end[sure] - 1]
    edge = _maybe_space(first) | _maybe_space(last)
    rows = np.sort(np.concatenate([np.flatnonzero(maybe), sure[edge]]))
    chars = pc.utf8_length(pc.utf8_trim_whitespace(arr.take(rows))).to_numpy(
        zero_copy_only=False)
    keep = chars < MIN_TEXT_CHARS
    return rows[keep], chars[keep]


def _maybe_space(byte: np.ndarray) -> np.ndarray:
    """ASCII white space, or a byte of a multi-byte character (which may be a Unicode
    space)."""
    return (byte == 32) | ((byte >= 9) & (byte <= 13)) | (byte >= 0x80)


def _placeholder(text: pa.ChunkedArray, rows: np.ndarray) -> np.ndarray:
    """Which of ``rows`` read "null", "none" or "nan" (any case, trimmed)."""
    if not len(rows):
        return np.zeros(0, dtype=bool)
    some = pc.utf8_lower(pc.utf8_trim_whitespace(
        pc.fill_null(text, "").combine_chunks().take(rows)))
    return pc.is_in(some, value_set=pa.array(PLACEHOLDER_TEXTS)).to_numpy(
        zero_copy_only=False)


def _blank(col: pa.ChunkedArray) -> pa.Array:
    """Null, empty, or white space only."""
    col = col.combine_chunks()
    return pc.fill_null(pc.or_(pc.equal(pc.binary_length(col), 0), pc.utf8_is_space(col)),
                        True)


def repeats_of(keys: np.ndarray, checks: np.ndarray) -> np.ndarray:
    """True for each post whose fingerprint (key and check) an earlier post already has."""
    mask = np.zeros(len(keys), dtype=bool)
    order = np.argsort(keys, kind="stable")  # equal keys keep their order: earliest first
    sk, sc = keys[order], checks[order]
    later = np.flatnonzero(sk[1:] == sk[:-1]) + 1
    if not len(later):
        return mask
    same = sc[later] == sc[later - 1]
    mask[order[later[same]]] = True
    for p in later[~same]:  # a key shared by two different uris (a 64-bit collision)
        j = p - 1
        while j >= 0 and sk[j] == sk[p]:
            if sc[j] == sc[p]:
                mask[order[p]] = True
                break
            j -= 1
    return mask


def reason_codes(table: pa.Table, repeats: np.ndarray) -> np.ndarray | None:
    """Index into ``REASONS`` per post (-1 for a valid post), or None when all are valid.
    ``repeats``: posts whose uri an earlier post of the table has."""
    n = len(table)
    uri, text, ts = (table.column(c) for c in POST_COLUMNS)
    uri_typed, text_typed = is_text_type(uri.type), is_text_type(text.type)
    bytes_bad = table.column(BAD_BYTES) if BAD_BYTES in table.column_names else None
    # A column of another type fails every row with its own reason; the other checks then
    # run on an empty stand-in.
    uri = uri if uri_typed else pa.chunked_array([pa.nulls(n, pa.string())])
    text = text if text_typed else pa.chunked_array([pa.nulls(n, pa.string())])
    ts = ts if is_text_type(ts.type) else pa.chunked_array([pa.nulls(n, pa.string())])
    short, chars = _short_texts(text)
    empty, placeholder, few = (np.zeros(n, dtype=bool) for _ in range(3))
    empty[short[chars == 0]] = True
    placeholder[short] = _placeholder(text, short)
    few[short] = True
    ts_text = pc.fill_null(ts, "")
    checks = [
        *(np.zeros(n, dtype=bool) if bytes_bad is None else
          _bools(pc.fill_null(pc.equal(bytes_bad, f"{what} is not valid UTF-8"), False))
          for what in ("uri", "text", "timestamp")),
        _bools(pc.fill_null(pc.equal(pc.binary_length(uri), 0), True)) if uri_typed
        else np.zeros(n, dtype=bool),
        np.full(n, not uri_typed),
        np.full(n, not text_typed),
        empty,
        placeholder,
        few,
        _bools(_blank(ts)),
        ~_bools(pc.and_(pc.match_substring_regex(ts_text, _TIMESTAMP), _real_day(ts_text))),
        repeats,
    ]
    if not np.logical_or.reduce(checks).any():
        return None
    code = np.full(n, -1, dtype=np.int8)
    for idx, failed in reversed(list(enumerate(checks))):  # the first matching rule wins
        code[failed] = idx
    return code


def _bools(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=bool)


class Validated(NamedTuple):
    """The valid posts with their uris' fingerprints, and ``(uri, reason)`` per rejected one."""

    valid: pa.Table
    invalid: list[tuple[str | None, str]]
    keys: np.ndarray
    checks: np.ndarray


def split_valid(table: pa.Table) -> Validated:
    """Validate posts (``as_post_table``'s output): the valid ones, and why the rest are not."""
    if is_text_type(table.column("uri").type):
        keys, checks = fingerprints(pc.fill_null(table.column("uri"), ""))
    else:  # every post is rejected for its uri's type: no repeats to find
        keys = checks = np.zeros(table.num_rows, dtype=np.int64)
    codes = reason_codes(table, repeats_of(keys, checks))
    table = table.select(list(POST_COLUMNS))
    if codes is None:
        return Validated(table, [], keys, checks)
    bad = codes >= 0
    rejected = table.filter(pa.array(bad))
    uris = (rejected.column("uri").to_pylist() if is_text_type(rejected.column("uri").type)
            else [None] * rejected.num_rows)
    invalid = [(u, REASONS[c]) for u, c in zip(uris, codes[bad].tolist())]
    good = ~bad
    return Validated(table.filter(pa.array(good)), invalid, keys[good], checks[good])
