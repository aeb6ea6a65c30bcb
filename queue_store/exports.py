"""Export bookkeeping: which output rows went to which parquet files (``parquet.export_output``
drives it).

An export is *planned* (rows tagged with a new export id), then its files are written under
names derived from that id, then it is marked *written*. A crash anywhere leaves a planned
export that the next ``plan_export`` returns again: the rerun rewrites the same file names
with the same rows, so nothing is duplicated. Only rows of written exports are ever cleared.

- ``plan_export(max_rows)`` — reserve about ``max_rows`` unexported rows (or resume a plan);
- ``export_rows(export_id)`` — its stored rows, in pages;
- ``bury_export_rows(bad)`` — rows that cannot be exported, to dead letters;
- ``export_schema()`` / ``save_export_schema(schema)`` — the output's fixed column types;
- ``mark_exported(export_id)``, ``clear_exported()``, ``busy_exporting()``.
"""
from __future__ import annotations

import base64
from typing import Iterator, Sequence

import pyarrow as pa

from queue_store.models import ExportPlan
from queue_store.queue_file import QueueFile
from queue_store.rows.column_types import merge_schema
from queue_store.rows.shapes import post_of
from queue_store.rows.typed import from_ipc, to_ipc


class ExportBook(QueueFile):
    def plan_export(self, max_rows: int) -> ExportPlan | None:
        """Reserve up to ~max_rows unexported rows (whole output rows); resumes a crashed plan."""
        t = self.tables
        with self._transaction() as c:
            row = c.execute(f"SELECT id FROM {t['exports']} WHERE state = 'planned' "
                            "ORDER BY id LIMIT 1").fetchone()
            if row is None:
                total, last_id = 0, None
                for out_id, n_rows in c.execute(f"SELECT id, n_rows FROM {t['output']} "
                                                "WHERE export_id IS NULL ORDER BY id"):
                    total += n_rows
                    last_id = out_id
                    if total >= max_rows:
                        break
                if last_id is None:
                    return None
                row = c.execute(f"INSERT INTO {t['exports']} (state, n_rows, created_at) "
                                "VALUES ('planned', ?, ?) RETURNING id",
                                (total, self.clock())).fetchone()
                c.execute(f"UPDATE {t['output']} SET export_id = ? "
                          "WHERE export_id IS NULL AND id <= ?", (row[0], last_id))
            n = c.execute(f"SELECT COUNT(*) FROM {t['output']} WHERE export_id = ?",
                          (row[0],)).fetchone()[0]
        return ExportPlan(export_id=row[0], n_batches=n,
                          file_stem=f"part-{self.store_id}-{row[0]:08d}")

    def export_rows(self, export_id: int) -> Iterator[tuple[int, bytes]]:
        """The output rows of one planned export, ``(row id, Arrow IPC stream)``, in pages."""
        for page in self._pages(self.conn, f"SELECT id, payload FROM {self.tables['output']} "
                                "WHERE export_id = ?", (export_id,), size=64):
            yield from page

    def bury_export_rows(self, bad: Sequence[tuple[int, int | None, str]]) -> int:
        """Move output rows that cannot be exported — ``(output row id, index in its table,
        reason)``; index None for a stored table that cannot be read at all — to dead letters
        (``--requeue-dead`` relabels them). The rest of each stored table stays for export."""
        t = self.tables
        by_row: dict[int, dict[int | None, str]] = {}
        for row_id, index, reason in bad:
            by_row.setdefault(row_id, {})[index] = reason
        with self._transaction() as c:
            for row_id, lines in by_row.items():
                found = c.execute(f"SELECT batch_id, version, payload FROM {t['output']} "
                                  "WHERE id = ?", (row_id,)).fetchone()
                if found is None:
                    continue
                batch_id, config_hash, payload = found
                if None in lines:  # the stored table itself is damaged: kept as it is
                    self._dead_letter_raw(c, batch_id, payload, lines[None], 0, config_hash,
                                          table="output", row_id=row_id)
                    continue
                table = from_ipc(payload)
                rows = table.to_pylist()
                self._insert_dead(c, [(post_of(rows[i]), reason) for i, reason in
                                      lines.items()], 0, config_hash, batch_id)
                keep = [i for i in range(table.num_rows) if i not in lines]
                if keep:
                    c.execute(f"UPDATE {t['output']} SET payload = ?, n_rows = ? WHERE id = ?",
                              (to_ipc(table.take(pa.array(keep, pa.int64()))), len(keep),
                               row_id))
                else:
                    self._delete(c, "output", row_id)
        return len(bad)

    def export_schema(self) -> pa.Schema | None:
        """The output's column types, fixed by the first rows to give each a type."""
        return self._stored_schema(self.conn)

    def save_export_schema(self, schema: pa.Schema) -> pa.Schema:
        """Fix the output's column types: merged into what is stored (the first to give a
        column a type wins, concurrent runs included); returns the stored result."""
        with self._transaction() as c:
            merged = merge_schema(self._stored_schema(c), schema)
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('export_schema', ?)",
                      (base64.b64encode(merged.serialize().to_pybytes()).decode(),))
        return merged

    @staticmethod
    def _stored_schema(c) -> pa.Schema | None:
        row = c.execute("SELECT value FROM meta WHERE key = 'export_schema'").fetchone()
        return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(row[0]))) if row else None

    def mark_exported(self, export_id: int) -> None:
        with self._transaction() as c:
            c.execute(f"UPDATE {self.tables['exports']} SET state = 'written' WHERE id = ?",
                      (export_id,))

    def clear_exported(self) -> int:
        """Delete output rows whose parquet is written; rows added since then survive."""
        t = self.tables
        with self._transaction() as c:
            return c.execute(f"DELETE FROM {t['output']} WHERE export_id IN "
                             f"(SELECT id FROM {t['exports']} WHERE state = 'written')").rowcount

    def busy_exporting(self) -> str | None:
        """Why the parquet output may change under a compaction now (None: it may not): batches
        leased by a run, or an export planned and not finished (a crash's is finished by the
        next export)."""
        held = self._leased_batches()
        if held:
            return f"{held} batch(es) are leased by a run"
        planned = self.conn.execute(f"SELECT COUNT(*) FROM {self.tables['exports']} WHERE "
                                    "state = 'planned'").fetchone()[0]
        if planned:
            return f"{planned} export(s) are unfinished (--write-cache finishes them)"
        return None
