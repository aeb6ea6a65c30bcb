"""One Arrow type per output column across every exported file.

The first rows fix each column's type (a column with no value so far stays *open*: null, or a
list of nulls, until a value arrives; one still open when its first file is written is
written as text and stays text). Later rows are cast to it only where no value can change:
the same type, nulls, integer widths, integers into floats, whole floats into integers (value
checked), lists and structs element-wise. Anything else (``"x"`` into an integer column,
``0.5`` into an integer column) is an error for the rows that carry it, never a file whose
schema disagrees with the rest of the dataset.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

# What rows that cannot be converted raise (casting, schema and IPC errors).
EXPORT_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError,
                 ValueError, KeyError)


class TypeClash(pa.ArrowInvalid):
    """A value whose type the column's fixed type cannot hold exactly."""


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def _castable(src: pa.DataType, dst: pa.DataType, lenient: bool = False) -> bool:
    """Can values of ``src`` become ``dst`` unchanged? ``lenient`` also allows floats into
    integers, which the safe cast then checks value by value (1.0 fits, 0.5 does not)."""
    if src == dst or pa.types.is_null(src):
        return True
    if pa.types.is_integer(src) and (pa.types.is_integer(dst) or pa.types.is_floating(dst)):
        return True
    if pa.types.is_floating(src) and pa.types.is_floating(dst):
        return True
    if lenient and pa.types.is_floating(src) and pa.types.is_integer(dst):
        return True
    if _is_list(src) and _is_list(dst):
        return _castable(src.value_type, dst.value_type, lenient)
    if pa.types.is_struct(src) and pa.types.is_struct(dst):
        names = {dst.field(i).name: dst.field(i).type for i in range(dst.num_fields)}
        return all(src.field(i).name in names
                   and _castable(src.field(i).type, names[src.field(i).name], lenient)
                   for i in range(src.num_fields))
    return _is_text(src) and _is_text(dst)


def is_open(t: pa.DataType) -> bool:
    """No value has fixed this type yet: null, or a list whose elements are all null."""
    return pa.types.is_null(t) or (_is_list(t) and is_open(t.value_type))


def conform(table: pa.Table, schema: pa.Schema | None, lenient: bool = False) -> pa.Table:
    """``table`` with ``schema``'s columns and types (new columns appended as they are)."""
    if schema is None or table.num_rows == 0:
        return table
    n = table.num_rows
    fields, columns = [], []
    for field in schema:
        if field.name not in table.column_names:
            fields.append(field)
            columns.append(pa.nulls(n, field.type))
            continue
        col = table.column(field.name)
        target = col.type if is_open(field.type) and _castable(field.type, col.type) \
            else field.type
        if col.null_count == len(col):
            col = pa.nulls(n, target)
        elif not _castable(col.type, target, lenient):
            raise TypeClash(f"column {field.name!r} holds {col.type} values, but its type in "
                            f"this integration's output is {target}")
        elif col.type != target:
            try:
                col = pc.cast(col, target, safe=True)  # raises if a value would change
            except pa.ArrowInvalid as exc:
                raise TypeClash(f"column {field.name!r} ({target} in this integration's "
                                f"output): {exc}") from None
        fields.append(pa.field(field.name, target))
        columns.append(col)
    for name in table.column_names:
        if name not in schema.names:
            fields.append(table.schema.field(name))
            columns.append(table.column(name))
    return pa.table(columns, schema=pa.schema(fields))


def concat_conformed(parts: list[pa.Table]) -> pa.Table:
    """One table of ``parts``, every column in the type its first values gave it."""
    if not parts:
        return pa.table({})
    if len(parts) == 1:
        return parts[0]
    schema = parts[0].schema
    for part in parts[1:]:
        schema = conform(part, schema).schema
    return pa.concat_tables([conform(part, schema) for part in parts])


def merge_schema(fixed: pa.Schema | None, seen: pa.Schema) -> pa.Schema:
    """``fixed`` with its open columns typed by ``seen`` where ``seen`` has values, and
    ``seen``'s new columns appended: the first rows to give a column a type fix it."""
    if fixed is None:
        return seen
    fields = []
    for field in fixed:
        new = seen.field(field.name) if field.name in seen.names else None
        upgrade = (new is not None and is_open(field.type) and not is_open(new.type)
                   and _castable(field.type, new.type))
        fields.append(pa.field(field.name, new.type) if upgrade else field)
    fields.extend(f for f in seen if f.name not in fixed.names)
    return pa.schema(fields)


def _concrete(t: pa.DataType) -> pa.DataType:
    if pa.types.is_null(t):
        return pa.string()
    if _is_list(t):
        return pa.list_(_concrete(t.value_type))
    return t


def strings_for_nulls(table: pa.Table) -> pa.Table:
    """Columns with no value yet are written as text (a file needs a concrete type)."""
    for i, field in enumerate(table.schema):
        if is_open(field.type):
            table = table.set_column(i, pa.field(field.name, _concrete(field.type)),
                                     pc.cast(table.column(i), _concrete(field.type)))
    return table
