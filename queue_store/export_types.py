"""One Arrow type per output column across every exported file.

The first export fixes each column's type (a column null so far stays open until a value
arrives); later chunks are cast to it only where no value can change: the same type, nulls,
integer widths, integers into floats. Anything else (``"x"`` into an integer column, ``0.5``
into an integer column) is an error for the rows that carry it, never a file whose schema
disagrees with the rest of the dataset.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from queue_store import codec

# What a chunk that cannot be converted raises (JSON, casting, schema errors).
EXPORT_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError,
                 codec.PayloadError, ValueError, KeyError)


class TypeClash(pa.ArrowInvalid):
    """A value whose type the column's fixed type cannot hold exactly."""


def _castable(src: pa.DataType, dst: pa.DataType) -> bool:
    if src == dst or pa.types.is_null(src):
        return True
    if pa.types.is_integer(src) and (pa.types.is_integer(dst) or pa.types.is_floating(dst)):
        return True
    if pa.types.is_floating(src) and pa.types.is_floating(dst):
        return True
    return (pa.types.is_string(src) or pa.types.is_large_string(src)) and \
        (pa.types.is_string(dst) or pa.types.is_large_string(dst))


def conform(table: pa.Table, schema: pa.Schema | None) -> pa.Table:
    """``table`` with ``schema``'s columns and types (new columns appended as they are)."""
    if schema is None or table.num_rows == 0:
        return table
    n = table.num_rows
    fields, columns = [], []
    for field in schema:
        if field.name not in table.column_names:
            typ = field.type
            fields.append(field)
            columns.append(pa.nulls(n, typ))
            continue
        col = table.column(field.name)
        target = col.type if pa.types.is_null(field.type) else field.type
        if col.null_count == len(col):
            col = pa.nulls(n, target)
        elif not _castable(col.type, target):
            raise TypeClash(f"column {field.name!r} holds {col.type} values, but its type in "
                            f"this integration's output is {target}")
        elif col.type != target:
            col = pc.cast(col, target, safe=True)  # raises if a value would change
        fields.append(pa.field(field.name, target))
        columns.append(col)
    for name in table.column_names:
        if name not in schema.names:
            fields.append(table.schema.field(name))
            columns.append(table.column(name))
    return pa.table(columns, schema=pa.schema(fields))


def strings_for_nulls(table: pa.Table) -> pa.Table:
    """Columns with no value yet are written as text: a file needs a concrete type."""
    for i, field in enumerate(table.schema):
        if pa.types.is_null(field.type):
            table = table.set_column(i, pa.field(field.name, pa.string()),
                                     pa.nulls(table.num_rows, pa.string()))
    return table
