"""Which output rows went into which parquet file, so an export survives any crash.

An export is *planned* (rows tagged with a new export id), then its files are written under
names derived from that id, then it is marked *written*. A crash anywhere leaves a planned
export that the next ``plan_export`` returns again: the rerun rewrites the same file names with
the same rows, so nothing is duplicated. Only rows of written exports are ever cleared.
"""
from __future__ import annotations

import time
from typing import Any, Iterator

from queue_store.models import ExportPlan


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
        last = 0
        while True:
            page = self.conn.execute(f"SELECT id, payload FROM {self.tables['output']} "
                                     "WHERE export_id = ? AND id > ? ORDER BY id LIMIT 64",
                                     (export_id, last)).fetchall()
            if not page:
                return
            for _, payload in page:
                yield payload
            last = page[-1][0]

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
