"""Write the output queue to a hive-partitioned parquet dataset, crash-safely.

Layout: ``<out_dir>/partition_date=YYYY-MM-DD/<file_stem>.parquet`` with the post's date.
Each file is written to a dot-prefixed temp name (ignored by dataset readers) and renamed
into place, so a reader never sees half a file and a rerun replaces rather than adds.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq
from pydantic import BaseModel

from queue_store import codec
from queue_store.models import ExportPlan

DEFAULT_EXPORT_ROWS = 50_000


class ExportSource(Protocol):
    def plan_export(self, max_rows: int = ...) -> ExportPlan | None: ...
    def export_payloads(self, export_id: int) -> Iterable[str]: ...
    def mark_exported(self, export_id: int) -> None: ...


class ExportStats(BaseModel):
    exports: int = 0
    files: int = 0
    rows: int = 0


def _read_ndjson(body: io.BytesIO, as_text: list[str]) -> pa.Table:
    schema = pa.schema([(name, pa.string()) for name in as_text])
    body.seek(0)
    size = body.getbuffer().nbytes
    return pajson.read_json(
        body, read_options=pajson.ReadOptions(block_size=max(1 << 20, min(size, 1 << 28)),
                                              use_threads=False),
        parse_options=pajson.ParseOptions(explicit_schema=schema,
                                          unexpected_field_behavior="infer"))


def payloads_to_table(payloads: Iterable[str]) -> pa.Table:
    """Parse output-queue rows with Arrow's C++ JSON reader (no Python object per row)."""
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
    # A column that is null in every row of this chunk (e.g. ``reason``) would otherwise get
    # the null type and clash with other files of the dataset.
    for i, field in enumerate(table.schema):
        if pa.types.is_null(field.type):
            table = table.set_column(i, pa.field(field.name, pa.string()),
                                     pa.nulls(table.num_rows, pa.string()))
    # Columns in the order the rows were written (explicit types put theirs first).
    order = [c for c in first_row if c in table.column_names]
    return table.select(order + [c for c in table.column_names if c not in order])


def write_atomic(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def export_output(source: ExportSource, out_dir: str | Path,
                  max_rows: int = DEFAULT_EXPORT_ROWS) -> ExportStats:
    """Export every unexported output row; resumes (rewrites) a crashed export first."""
    stats = ExportStats()
    out = Path(out_dir)
    while (plan := source.plan_export(max_rows)) is not None:
        table = payloads_to_table(source.export_payloads(plan.export_id))
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
