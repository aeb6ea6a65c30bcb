"""Make the output queue the hive-partitioned parquet dataset, crash-safely: recorded labelled
files published (``staging``), output rows of older queue files written out.

Layout: ``<out>/partition_date=YYYY-MM-DD/<file_stem>.parquet`` with the post's date, in a
local folder or an object store (``location.py``). Each file appears whole (a temp name
renamed into place; an object store's completed upload), so a reader never sees half a file,
and a rerun writes the same names again: it replaces rather than adds. Output
rows are read back as the typed Arrow tables they were stored as: nothing is parsed or
inferred here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pyarrow as pa
from pydantic import BaseModel

from queue_store.isolate import isolate_failures
from queue_store.location import Location
from queue_store.rows.column_types import (EXPORT_ERRORS, concat_conformed, conform,
                                           strings_for_nulls)
from queue_store.rows.typed import from_ipc
from queue_store.staging import by_post_day, publish
from queue_store.store import QueueStore

class ExportStats(BaseModel):
    exports: int = 0
    files: int = 0
    rows: int = 0
    dead_lettered: int = 0  # rows that could not be converted (moved to dead letters)


def salvage(rows: Iterable[tuple[int, bytes]], schema: pa.Schema | None
            ) -> tuple[pa.Table, list[tuple[int, int | None, str]]]:
    """Convert an export chunk row by row where needed: halve it until the rows that do not
    fit ``schema`` are found. Returns the table of the good rows (types fixed by ``schema``,
    or by the first good rows) and ``(output row id, index, reason)`` for each bad one (index
    None: a stored table that cannot be read at all)."""
    items, bad = [], []
    for row_id, payload in rows:
        try:
            table = from_ipc(payload)
        except EXPORT_ERRORS as exc:
            bad.append((row_id, None, f"export: undecodable output row: {exc}"[:500]))
            continue
        items.extend((row_id, i, table.slice(i, 1)) for i in range(table.num_rows))
    types = [schema]

    def convert(group: list[tuple[int, int, pa.Table]]) -> pa.Table:
        table = conform(concat_conformed([t for _, _, t in group]), types[0], lenient=True)
        types[0] = table.schema
        return table

    done, failed = isolate_failures(items, convert, catch=EXPORT_ERRORS)
    bad += [(row_id, i, f"export: {type(exc).__name__}: {exc}"[:500])
            for (row_id, i, _), exc in failed]
    if not done:
        return pa.table({}), bad
    return pa.concat_tables([conform(t, types[0], lenient=True) for _, t in done]), bad


def export_output(store: QueueStore, out: Location | str | Path, max_rows: int
                  ) -> ExportStats:
    """Publish every recorded labelled file (``staging.publish``), then export every output
    row an older queue file holds, about ``max_rows`` per file (``PipelineConfig.export_rows``);
    resumes (rewrites) a crashed export first.

    Every file keeps the column types the queue file holds (the first rows to give a column
    a type fixed it). A chunk that cannot be converted to them is split until the rows at
    fault are found; those move to dead letters with the error, and the rest is exported: no
    row can jam the export.
    """
    out = out if isinstance(out, Location) else Location.of(out)  # a path: a local folder
    published = publish(store, out)
    stats = ExportStats(files=published.files, rows=published.rows)
    schema = store.export_schema()
    while (plan := store.plan_export(max_rows)) is not None:
        rows = list(store.export_rows(plan.export_id))
        try:  # lenient: a whole float takes an integer column (its value is checked)
            table = conform(concat_conformed([from_ipc(p) for _, p in rows]), schema,
                            lenient=True)
        except EXPORT_ERRORS:
            table, bad = salvage(rows, schema)
            store.bury_export_rows(bad)
            stats.dead_lettered += len(bad)
        del rows
        table = strings_for_nulls(table)  # what the files hold fixes the types from now on
        if table.num_rows and table.schema != schema:
            schema = store.save_export_schema(table.schema)
        if table.num_rows:
            for date, part in by_post_day(table):
                out.write_parquet(f"partition_date={date}/{plan.file_stem}.parquet", part)
                stats.files += 1
                stats.rows += part.num_rows
        store.mark_exported(plan.export_id)
        stats.exports += 1
        del table
        # Hand the chunk's buffers back to the OS: the allocator would keep them, and a
        # long-running writer's memory would creep up export after export.
        pa.default_memory_pool().release_unused()
    return stats
