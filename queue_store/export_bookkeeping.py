"""Which output rows went into which parquet file, so an export survives any crash.

An export is *planned* (rows tagged with a new export id), then its files are written under
names derived from that id, then it is marked *written*. A crash anywhere leaves a planned
export that the next ``plan_export`` returns again: the rerun rewrites the same file names with
the same rows, so nothing is duplicated. Only rows of written exports are ever cleared.
"""
from __future__ import annotations

import base64
import time
from typing import Any, Iterator

import pyarrow as pa

from queue_store import codec
from queue_store.enqueueing import fold_labelled
from queue_store.export_types import merge_schema
from queue_store.models import ExportPlan
from queue_store.typed_rows import from_ipc, post_of, to_ipc


class ExportBookkeeping:
    """Mixed into ``QueueStore``; relies on its ``conn``, ``tables``, ``store_id`` and ``_tx``."""

    conn: Any
    tables: dict[str, str]
    store_id: str
    integration: str

    def plan_export(self, max_rows: int = 50_000) -> ExportPlan | None:
        """Reserve up to ~max_rows unexported rows (whole output rows); resumes a crashed plan."""
        t = self.tables
        with self._tx() as c:  # type: ignore[attr-defined]
            row = c.execute(f"SELECT id FROM {t['exports']} WHERE state = 'planned' "
                            "ORDER BY id LIMIT 1").fetchone()
            if row is not None:
                return self._plan(c, row[0])
            total, last_id = 0, None
            for out_id, n_rows in c.execute(f"SELECT id, n_rows FROM {t['output']} "
                                            "WHERE export_id IS NULL ORDER BY id"):
                total += n_rows
                last_id = out_id
                if total >= max_rows:
                    break
            if last_id is None:
                return None
            export_id = c.execute(f"INSERT INTO {t['exports']} (state, n_rows, created_at) "
                                  "VALUES ('planned', ?, ?) RETURNING id",
                                  (total, time.time())).fetchone()[0]
            c.execute(f"UPDATE {t['output']} SET export_id = ? "
                      "WHERE export_id IS NULL AND id <= ?", (export_id, last_id))
            return self._plan(c, export_id)

    def _plan(self, c: Any, export_id: int) -> ExportPlan:
        n = c.execute(f"SELECT COUNT(*) FROM {self.tables['output']} WHERE export_id = ?",
                      (export_id,)).fetchone()[0]
        return ExportPlan(export_id=export_id, n_batches=n,
                          file_stem=f"part-{self.store_id}-{export_id:08d}")

    def export_payloads(self, export_id: int) -> Iterator[str]:
        """The rows of one planned export: one encoded output-queue row (a completed batch,
        a JSON array of row objects, one per line) at a time."""
        return (payload for _, payload in self.export_rows(export_id))

    def export_rows(self, export_id: int) -> Iterator[tuple[int, str]]:
        """Like ``export_payloads``, with each output row's id (to bury single lines)."""
        last = 0
        while True:
            page = self.conn.execute(f"SELECT id, payload FROM {self.tables['output']} "
                                     "WHERE export_id = ? AND id > ? ORDER BY id LIMIT 64",
                                     (export_id, last)).fetchall()
            if not page:
                return
            yield from page
            last = page[-1][0]

    def bury_export_lines(self, bad: list[tuple[int, int, str]]) -> int:
        """Move lines that cannot be exported (``(output row id, line index, reason)``) from
        the output queue to dead letters, in one transaction; ``--requeue-dead`` relabels
        them. The rest of each output row stays for export."""
        t = self.tables
        by_row: dict[int, dict[int, str]] = {}
        for row_id, line, reason in bad:
            by_row.setdefault(row_id, {})[line] = reason
        now = time.time()
        with self._tx() as c:  # type: ignore[attr-defined]
            fold_labelled(c, t)  # so that "done = 0" below is not undone by a later fold
            for row_id, lines in by_row.items():
                found = c.execute(f"SELECT batch_id, version, payload FROM {t['output']} "
                                  "WHERE id = ?", (row_id,)).fetchone()
                if found is None:
                    continue
                batch_id, version, payload = found
                items = row_items(payload)
                for i, reason in lines.items():
                    post = _post_fields(items[i])
                    c.execute(f"INSERT INTO {t['dead']} (uri, payload, decodable, reason, "
                              "attempt, version, source_batch_id, created_at) "
                              "VALUES (?, ?, ?, ?, 0, ?, ?, ?)",
                              (post.get("uri") if post else None,
                               codec.dumps(post) if post else items[i], int(post is not None),
                               reason, version, batch_id, now))
                    if post:
                        c.execute(f"UPDATE {t['ledger']} SET done = 0 WHERE uri = ? AND "
                                  "version = ?", (post["uri"], version))
                keep = [i for i in range(len(items)) if i not in lines]
                if keep:
                    c.execute(f"UPDATE {t['output']} SET payload = ?, n_rows = ? WHERE id = ?",
                              (keep_items(payload, items, keep), len(keep), row_id))
                else:
                    c.execute(f"DELETE FROM {t['output']} WHERE id = ?", (row_id,))
        return len(bad)

    def export_schema(self) -> pa.Schema | None:
        """The output's column types, fixed by the first export (every file keeps them)."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'export_schema'").fetchone()
        return _schema_of(row[0]) if row else None

    def save_export_schema(self, schema: pa.Schema) -> pa.Schema:
        """Fix the output's column types: merged into what is stored (the first to give a
        column a type wins, concurrent runs included); returns the stored result."""
        with self._tx() as c:  # type: ignore[attr-defined]
            row = c.execute("SELECT value FROM meta WHERE key = 'export_schema'").fetchone()
            merged = merge_schema(_schema_of(row[0]) if row else None, schema)
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('export_schema', ?)",
                      (base64.b64encode(merged.serialize().to_pybytes()).decode(),))
        return merged

    def mark_exported(self, export_id: int) -> None:
        with self._tx() as c:  # type: ignore[attr-defined]
            c.execute(f"UPDATE {self.tables['exports']} SET state = 'written' WHERE id = ?",
                      (export_id,))

    def clear_exported(self) -> int:
        """Delete output rows whose parquet is written; rows added since then survive."""
        t = self.tables
        with self._tx() as c:  # type: ignore[attr-defined]
            return c.execute(f"DELETE FROM {t['output']} WHERE export_id IN "
                             f"(SELECT id FROM {t['exports']} WHERE state = 'written')").rowcount


def _schema_of(value: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(value)))


def row_items(payload: str | bytes) -> list[Any]:
    """An output-queue row's items: JSON lines (text rows) or 1-row tables (Arrow rows)."""
    if isinstance(payload, str):
        return codec.ndjson_body(payload).split("\n") if len(payload) > 2 else []
    table = from_ipc(payload)
    return [table.slice(i, 1) for i in range(table.num_rows)]


def keep_items(payload: str | bytes, items: list[Any], keep: list[int]) -> str | bytes:
    """The row's payload with only the items at ``keep``, in its own format."""
    if isinstance(payload, str):
        return codec.join_lines([items[i] for i in keep])
    return to_ipc(from_ipc(payload).take(pa.array(keep, pa.int64())))


def _post_fields(item: Any) -> dict | None:
    """The post a buried output item came from (so it can be requeued), if it decodes."""
    if isinstance(item, pa.Table):
        return post_of(item.to_pylist()[0])
    try:
        row = codec.loads(item)
    except codec.PayloadError:
        return None
    if not isinstance(row, dict) or not isinstance(row.get("uri"), str):
        return None
    return post_of(row)
