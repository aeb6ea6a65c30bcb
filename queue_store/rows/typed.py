"""Classifier outputs as typed Arrow columns, fitted to an integration's fixed output types.

A classifier returns one dict per post. ``typed_columns`` turns a block of them into Arrow
columns (types inferred once per block, in C++); ``fit_rows`` casts a completed batch's rows
to the types the integration's first rows fixed (``export_types``). A value that cannot be
held exactly splits its post off with a reason: that post fails (retried, then
dead-lettered) instead of a parquet file whose schema disagrees with the rest. Completed
batches travel to the output queue as Arrow IPC streams: nothing is re-parsed or inferred
at export.
"""
from __future__ import annotations

from typing import Any

import pyarrow as pa

from queue_store.rows.column_types import EXPORT_ERRORS, concat_conformed, conform

_BUILD_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError,
                 OverflowError, TypeError, ValueError)


def typed_columns(rows: list[dict[str, Any] | None]
                  ) -> tuple[list[str], list[pa.Array], dict[int, str]]:
    """Column names (first-seen order), one Arrow array each, and ``{row: reason}`` for rows
    whose value does not fit the type the block's first value gave its column (``None``
    rows, failed posts, get nulls)."""
    names: dict[str, None] = {}
    for row in rows:
        if row:
            names.update(dict.fromkeys(row))
    bad: dict[int, str] = {}
    arrays = []
    for name in names:
        values = [row.get(name) if row else None for row in rows]
        try:
            arrays.append(pa.array(values))
        except _BUILD_ERRORS:  # mixed types in one block: value by value
            arrays.append(_first_type_wins(name, values, bad))
    return list(names), arrays, bad


def _first_type_wins(name: str, values: list[Any], bad: dict[int, str]) -> pa.Array:
    kept: list[pa.Array] = []
    target: pa.DataType | None = None
    for i, value in enumerate(values):
        if value is None:
            kept.append(pa.nulls(1, target or pa.null()))
            continue
        try:
            one = pa.array([value])
            if target is None or pa.types.is_null(target):
                target = one.type
            else:
                one = conform(pa.table({name: one}), pa.schema([(name, target)]),
                              lenient=True).column(0).combine_chunks()
            kept.append(one)
        except (*_BUILD_ERRORS, *EXPORT_ERRORS):
            bad.setdefault(i, f"output column {name!r} holds {_type_of(value)} values (e.g. "
                              f"{value!r:.80}) beside {target} values in one batch")
            kept.append(pa.nulls(1, target or pa.null()))
    target = target or pa.null()
    return pa.concat_arrays([a.cast(target) if a.type != target else a for a in kept])


def _type_of(value: Any) -> str:
    try:
        return str(pa.array([value]).type)
    except _BUILD_ERRORS:
        return type(value).__name__


def fit_rows(table: pa.Table, schema: pa.Schema | None) -> tuple[pa.Table, dict[int, str]]:
    """``table`` cast to ``schema`` (new columns kept as they are), and ``{row: reason}`` for
    the rows that cannot be (left out of the returned table)."""
    try:
        return conform(table, schema, lenient=True), {}
    except EXPORT_ERRORS:
        pass
    bad: dict[int, str] = {}
    fitted: list[pa.Table] = []
    for i in range(table.num_rows):  # rare: find the rows at fault
        row = table.slice(i, 1)
        try:
            fitted.append(conform(row, schema, lenient=True))
            continue
        except EXPORT_ERRORS:
            pass
        try:  # typed by its block (e.g. [] as a list of lists): retype from its own values
            fitted.append(conform(pa.Table.from_pylist(row.to_pylist()), schema, lenient=True))
        except EXPORT_ERRORS as exc:
            bad[i] = str(exc)[:500]
    return concat_conformed(fitted) if fitted else table.slice(0, 0), bad


def to_ipc(table: pa.Table) -> bytes:
    """A table as one Arrow IPC stream (what an output-queue row stores)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as out:
        out.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(blob: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(blob)).read_all()
