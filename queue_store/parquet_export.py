"""Write the output queue to a hive-partitioned parquet dataset, crash-safely.

Layout: ``<out_dir>/partition_date=YYYY-MM-DD/<file_stem>.parquet`` with the post's date.
Each file is written to a dot-prefixed temp name (ignored by dataset readers) and renamed
into place, so a reader never sees half a file and a rerun replaces rather than adds.
"""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from queue_store.models import ExportPlan

DEFAULT_EXPORT_ROWS = 50_000


class ExportSource(Protocol):
    def plan_export(self, max_rows: int = ...) -> ExportPlan | None: ...
    def export_rows(self, export_id: int) -> Iterable[list[dict]]: ...
    def mark_exported(self, export_id: int) -> None: ...


class ExportStats(BaseModel):
    exports: int = 0
    files: int = 0
    rows: int = 0


def partition_date(timestamp: str) -> str:
    """The post's day: both accepted timestamp forms start with ``YYYY-MM-DD``."""
    return timestamp[:10]


def rows_to_table(rows: list[dict]) -> pa.Table:
    table = pa.Table.from_pylist(rows)
    # A column that is null in every row of this chunk (e.g. ``reason``) would otherwise get
    # the null type and clash with other files of the dataset.
    for i, field in enumerate(table.schema):
        if pa.types.is_null(field.type):
            table = table.set_column(i, pa.field(field.name, pa.string()),
                                     pa.nulls(table.num_rows, pa.string()))
    return table


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
        # Each completed batch becomes Arrow at once: a chunk is held as columns, not as
        # tens of thousands of Python dicts.
        by_date: dict[str, list[pa.Table]] = defaultdict(list)
        for batch_rows in source.export_rows(plan.export_id):
            days: dict[str, list[dict]] = defaultdict(list)
            for row in batch_rows:
                days[partition_date(row["preprocessing_timestamp"])].append(row)
            for date, rows in days.items():
                by_date[date].append(rows_to_table(rows))
        for date, tables in sorted(by_date.items()):
            table = pa.concat_tables(tables, promote_options="permissive")
            write_atomic(out / f"partition_date={date}" / f"{plan.file_stem}.parquet", table)
            stats.files += 1
            stats.rows += table.num_rows
        source.mark_exported(plan.export_id)
        stats.exports += 1
    return stats
