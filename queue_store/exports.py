"""The output's bookkeeping: the labelled files completions recorded (``staging`` writes and
publishes them) and, for queue files written before labels went straight to parquet, the
output rows they hold and their exports (``parquet.export_output`` drives both).

A recorded file is *staged* (committed with its batches, not yet visible) until it is
*published* (moved to its final name), then kept as a marker: its row count, its name.

- ``staged(limit)`` — recorded files not published yet, oldest first;
- ``mark_published(ids)``; ``staging_owners()`` — what a staging garbage collection may not
  delete (files recorded, and runs holding leases, in one snapshot).

Old output rows: an export is *planned* (rows tagged with a new export id), then its files
are written under names derived from that id, then it is marked *written*. A crash anywhere
leaves a planned export that the next ``plan_export`` returns again: the rerun rewrites the
same file names with the same rows, so nothing is duplicated. Only rows of written exports
are ever cleared.

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

from queue_store.lease_holder import LeaseHolder
from queue_store.models import ExportPlan, StagedOutput, StagedRecord
from queue_store import codec
from queue_store.queue_file import QueueFile
from queue_store.rows.column_types import merge_schema
from queue_store.rows.shapes import post_of
from queue_store.rows.typed import from_ipc, to_ipc


class ExportBook(QueueFile):
    # -- recorded files ---------------------------------------------------------------------
    def staged(self, limit: int = 256) -> list[StagedRecord]:
        """Up to ``limit`` recorded files not published yet, oldest first."""
        if not self.records_files:
            return []
        return [StagedRecord(id=i, version=v, output=StagedOutput(
                    stem=stem, files=codec.loads(files), rows=n))
                for i, v, stem, files, n in self.conn.execute(
                    f"SELECT id, version, stem, files, n_rows FROM {self.tables['files']} "
                    "WHERE state = 'staged' ORDER BY id LIMIT ?", (limit,))]

    def mark_published(self, ids: Sequence[int]) -> None:
        with self._transaction() as c:
            c.executemany(f"UPDATE {self.tables['files']} SET state = 'published' WHERE id = ?",
                          [(i,) for i in ids])

    def staging_owners(self) -> tuple[set[str], set[str]]:
        """``(run ids holding leases, staged paths recorded and not published)``, read in one
        snapshot: a staged file in neither is garbage (no commit can name it any more). A run
        that provably died (``LeaseHolder``) holds nothing: its leases are reaped, never
        used again."""
        with self._snapshot() as c:
            owners = c.execute(f"SELECT DISTINCT lease_owner FROM {self.tables['input']} "
                               "WHERE status = 'processing'").fetchall()
            recorded = c.execute(f"SELECT files FROM {self.tables['files']} WHERE state = "
                                 "'staged'").fetchall() if self.records_files else []
        runs = {h.run_id for (o,) in owners
                if (h := LeaseHolder.parse(o)) is not None and not h.provably_dead()}
        return runs, {path for (files,) in recorded for path in codec.loads(files).values()}

    # -- output rows of older queue files ---------------------------------------------------
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
        """Delete the markers of published files and the output rows whose parquet is
        written (their files stay); what was recorded or added since survives. Returns how
        many markers and rows went."""
        t = self.tables
        with self._transaction() as c:
            n = c.execute(f"DELETE FROM {t['files']} WHERE state = 'published'").rowcount
            return n + c.execute(f"DELETE FROM {t['output']} WHERE export_id IN (SELECT id "
                                 f"FROM {t['exports']} WHERE state = 'written')").rowcount

    def busy_exporting(self, unpublished: bool = True) -> str | None:
        """Why the parquet output may change under a compaction now (None: it may not): batches
        leased by a run, an export planned and not finished (a crash's is finished by the
        next export), or — with ``unpublished`` — labelled files recorded and not yet
        published (the next publish moves them in)."""
        held = self._leased_batches()
        if held:
            return f"{held} batch(es) are leased by a run"
        planned = self.conn.execute(f"SELECT COUNT(*) FROM {self.tables['exports']} WHERE "
                                    "state = 'planned'").fetchone()[0]
        if planned:
            return f"{planned} export(s) are unfinished (--write-cache finishes them)"
        staged = self.conn.execute(f"SELECT COUNT(*) FROM {self.tables['files']} WHERE state "
                                   "= 'staged'").fetchone()[0] if self.records_files else 0
        if staged and unpublished:
            return (f"{staged} labelled file(s) are not published yet (--write-cache "
                    "publishes them)")
        return None
