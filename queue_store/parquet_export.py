"""Write the output queue to a hive-partitioned parquet dataset, crash-safely.

Layout: ``<out_dir>/partition_date=YYYY-MM-DD/<file_stem>.parquet`` with the post's date.
Each file is written to a dot-prefixed temp name (ignored by dataset readers) and renamed
into place, so a reader never sees half a file and a rerun replaces rather than adds.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Iterable, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq
from pydantic import BaseModel

from queue_store import codec
from queue_store.export_bookkeeping import row_items
from queue_store.export_types import (EXPORT_ERRORS, concat_conformed, conform,
                                      strings_for_nulls)
from queue_store.models import ExportPlan
from queue_store.typed_rows import from_ipc

DEFAULT_EXPORT_ROWS = 50_000


class ExportSource(Protocol):
    def plan_export(self, max_rows: int = ...) -> ExportPlan | None: ...
    def export_payloads(self, export_id: int) -> Iterable[str | bytes]: ...
    def export_rows(self, export_id: int) -> Iterable[tuple[int, str | bytes]]: ...
    def bury_export_lines(self, bad: list[tuple[int, int, str]]) -> int: ...
    def export_schema(self) -> pa.Schema | None: ...
    def save_export_schema(self, schema: pa.Schema) -> pa.Schema: ...
    def mark_exported(self, export_id: int) -> None: ...


class ExportStats(BaseModel):
    exports: int = 0
    files: int = 0
    rows: int = 0
    dead_lettered: int = 0  # rows that could not be converted (moved to dead letters)


def _read_ndjson(body: io.BytesIO, as_text: list[str]) -> pa.Table:
    schema = pa.schema([(name, pa.string()) for name in as_text])
    body.seek(0)
    size = body.getbuffer().nbytes
    return pajson.read_json(
        body, read_options=pajson.ReadOptions(block_size=max(1 << 20, min(size, 1 << 28)),
                                              use_threads=False),
        parse_options=pajson.ParseOptions(explicit_schema=schema,
                                          unexpected_field_behavior="infer"))


def payloads_to_table(payloads: Iterable[str | bytes]) -> pa.Table:
    """Output-queue rows as one table: Arrow rows (IPC streams, the pipeline's) read as they
    are; text rows (JSON, from ``complete``) parsed by Arrow's C++ JSON reader."""
    parts: list[pa.Table] = []
    texts: list[str] = []
    for payload in payloads:
        if isinstance(payload, str):
            texts.append(payload)
            continue
        if texts:
            parts.append(json_rows_to_table(texts))
            texts = []
        parts.append(from_ipc(payload))
    if texts:
        parts.append(json_rows_to_table(texts))
    return concat_conformed([p for p in parts if p.num_rows])


def json_rows_to_table(payloads: Iterable[str]) -> pa.Table:
    """Parse JSON output-queue rows with Arrow's C++ JSON reader (no Python object per row)."""
    body, first_row = io.BytesIO(), None
    for payload in payloads:
        if len(payload) <= 2:
            continue
        lines = codec.ndjson_body(payload)
        if first_row is None:
            first_row = codec.loads(lines.split("\n", 1)[0])
        else:
            body.write(b"\n")
        body.write(lines.encode())
    if first_row is None:
        return pa.table({})
    # Arrow reads ISO-looking strings as timestamps; values must come out exactly as written,
    # so every column that holds text in the first row is declared text up front.
    as_text = [k for k, v in first_row.items() if isinstance(v, str)]
    table = _read_ndjson(body, as_text)
    temporal = [f.name for f in table.schema if pa.types.is_temporal(f.type)]
    if temporal:  # text columns that were null in the first row
        table = _read_ndjson(body, as_text + temporal)
    # Columns in the order the rows were written (explicit types put theirs first).
    order = [c for c in first_row if c in table.column_names]
    return table.select(order + [c for c in table.column_names if c not in order])


def salvage(rows: Iterable[tuple[int, str | bytes]], schema: pa.Schema | None
            ) -> tuple[pa.Table, list[tuple[int, int, str]]]:
    """Convert an export chunk line by line where needed: bisect until the lines that fail
    are found (an Arrow row's lines are its rows). Returns the table of the good lines
    (types fixed by ``schema``, or by the first good lines) and ``(output row id, line
    index, reason)`` for each bad one."""
    items = [(row_id, i, item) for row_id, payload in rows
             for i, item in enumerate(row_items(payload))]
    good: list[pa.Table] = []
    bad: list[tuple[int, int, str]] = []
    ref = [schema]

    def convert(part: list[tuple[int, int, Any]]) -> None:
        try:
            texts = [x[2] for x in part if isinstance(x[2], str)]
            tables = [x[2] for x in part if not isinstance(x[2], str)]
            if texts:
                tables.insert(0, json_rows_to_table([codec.join_lines(texts)]))
            table = conform(concat_conformed(tables), ref[0])
        except EXPORT_ERRORS as exc:
            if len(part) == 1:
                bad.append((part[0][0], part[0][1],
                            f"export: {type(exc).__name__}: {exc}"[:500]))
                return
            mid = len(part) // 2
            convert(part[:mid])
            convert(part[mid:])
            return
        ref[0] = table.schema
        good.append(table)

    if items:
        convert(items)
    if not good:
        return pa.table({}), bad
    final = ref[0]
    return pa.concat_tables([conform(t, final) for t in good]), bad


def write_atomic(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        pq.write_table(table, tmp, compression="zstd")
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half-written temp file is never left behind
        raise
    os.replace(tmp, path)


def export_output(source: ExportSource, out_dir: str | Path,
                  max_rows: int = DEFAULT_EXPORT_ROWS) -> ExportStats:
    """Export every unexported output row; resumes (rewrites) a crashed export first.

    Every file keeps the column types of the first export (stored in the queue file). A chunk
    that cannot be converted to them is split until the rows at fault are found; those move
    to dead letters with the error, and the rest is exported: no row can jam the export.
    """
    stats = ExportStats()
    out = Path(out_dir)
    schema = source.export_schema()
    while (plan := source.plan_export(max_rows)) is not None:
        try:
            table = conform(payloads_to_table(source.export_payloads(plan.export_id)), schema)
        except EXPORT_ERRORS:
            table, bad = salvage(source.export_rows(plan.export_id), schema)
            source.bury_export_lines(bad)
            stats.dead_lettered += len(bad)
        table = strings_for_nulls(table)  # what the files hold fixes the types from now on
        if table.num_rows and table.schema != schema:
            schema = source.save_export_schema(table.schema)
        if table.num_rows:
            # The post's day: both accepted timestamp forms start with YYYY-MM-DD.
            day = pc.utf8_slice_codeunits(table.column("preprocessing_timestamp"), 0, 10)
            for date in sorted(pc.unique(day).to_pylist()):
                part = table.filter(pc.equal(day, date))
                write_atomic(out / f"partition_date={date}" / f"{plan.file_stem}.parquet", part)
                stats.files += 1
                stats.rows += part.num_rows
        source.mark_exported(plan.export_id)
        stats.exports += 1
        del table
        # Hand the chunk's buffers back to the OS: the allocator would keep them, and a
        # long-running writer's memory would creep up export after export.
        pa.default_memory_pool().release_unused()
    return stats
