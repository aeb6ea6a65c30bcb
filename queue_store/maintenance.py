"""Maintenance of a queue file: clearing, compacting, checking and rebuilding the ledger.

- ``clear_input()`` / ``clear_output()`` — delete queued batches and dead letters / output
  rows, forgetting in the ledger what was never labelled (refused while a live run leases);
- ``compact(full=False)`` — free pages back to the file system (``full``: rewrite the file);
- ``verify_ledger()`` / ``rebuild_ledger(labelled)`` — check every ledger run's checksum;
  write the ledger anew from the queue file and ``(uris, config_hash)`` of the parquet output;
- ``set_flag(name)`` — mark something done once per queue file (``flag`` reads it).
"""
from __future__ import annotations

from itertools import chain
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa

from queue_store.exports import ExportBook
from queue_store.lease import LeaseCore
from queue_store.lease_holder import LeaseHolder
from queue_store.models import ClearResult, CompactResult, StagedOutput
from queue_store.queue_file import sqlite_errors
from queue_store.rows.typed import from_ipc
from queue_store.schema import QueueBusyError

Uris = list[tuple[pa.Array | pa.ChunkedArray, str]]  # (uri column, config_hash) pairs


class Maintenance(LeaseCore, ExportBook):
    def clear_input(self) -> ClearResult:
        """Delete every queued batch and dead letter, and forget their posts in the ledger
        under the config_hashes they were queued for (a later enqueue of that config_hash
        queues them again; their labels under others stay known); refused with
        ``QueueBusyError`` while a run that may be alive holds a lease (the message names
        it; leases of provably dead runs are taken back first). One transaction."""
        t = self.tables
        with self._transaction() as c:
            self._refuse_if_leased(c)
            result = ClearResult()
            for page in self._batch_uris(c):
                result.input_posts += self._forget(c, page)
            result.input_batches = c.execute(f"DELETE FROM {t['input']}").rowcount
            for page in self._dead_uris(c):
                result.dead_posts += self._forget(c, page)
            c.execute(f"DELETE FROM {t['dead']}")
        return result

    def clear_output(self, staged_uris: Callable[[StagedOutput], pa.Array] | None = None
                     ) -> ClearResult:
        """Delete the output queue: the markers of published files (their parquet stays), the
        labelled files recorded and not yet published and the output rows an older queue file
        holds, exported or not. What was never published is lost: its posts are forgotten in
        the ledger, so a later enqueue queues them again (``staged_uris`` reads a recorded
        file's uris; without it, such files refuse the clear; their staged files are left to
        ``staging.collect_garbage``). Refused while leased or with an unfinished export."""
        t = self.tables
        with self._transaction() as c:
            self._refuse_if_leased(c)
            # Leases refused above: an unfinished export, or files it cannot forget the
            # posts of.
            busy = self.busy_exporting(unpublished=staged_uris is None)
            if busy:
                raise QueueBusyError(f"queue file {self.path}: {busy}")
            result = ClearResult()
            for page in self._output_uris(c, "export_id IS NULL"):
                result.unexported_rows += self._forget(c, page)
            for record in self.staged(limit=-1) if staged_uris else ():
                result.unexported_rows += self._forget(c, [(staged_uris(record.output),
                                                            record.version)])
            result.exported_rows = c.execute(
                f"SELECT COALESCE(SUM(n_rows), 0) FROM {t['output']} WHERE export_id IS NOT "
                "NULL").fetchone()[0] + c.execute(
                f"SELECT COALESCE(SUM(n_rows), 0) FROM {t['files']} WHERE state = 'published'"
                ).fetchone()[0]
            c.execute(f"DELETE FROM {t['output']}")
            c.execute(f"DELETE FROM {t['files']}")
        return result

    def _output_uris(self, c: Any, where: str = "1") -> Iterator[Uris]:
        """``(uris, config_hash)`` of the output rows matching ``where``, a page at a time."""
        for page in self._pages(c, f"SELECT id, payload, version FROM {self.tables['output']} "
                                   f"WHERE {where}"):
            yield [(from_ipc(p).column("uri"), v) for _, p, v in page]

    def _refuse_if_leased(self, c: Any) -> None:
        """Take back the leases of provably dead runs (and expired ones), then refuse while
        any lease is left, naming its holders."""
        self._reap(c, self.clock())
        holders = [owner for (owner,) in c.execute(
            f"SELECT DISTINCT lease_owner FROM {self.tables['input']} WHERE status = "
            "'processing' LIMIT 3")]
        if holders:
            who = ", ".join(LeaseHolder.describe(h) for h in holders)
            raise QueueBusyError(f"queue file {self.path}: batches are leased by a live run "
                                 f"({who}); wait for it to end (or --reap-stale once it is "
                                 "gone), then clear")

    def _forget(self, c: Any, uris: Uris) -> int:
        """Forget posts in the ledger, each under the config_hash it was queued for (one run
        file per config_hash); returns how many."""
        forgotten = 0
        for vid, keys, checks in self._by_config_hash(c, uris):
            self.ledger.forget(c, keys, checks, vid, self._next_seq(c))
            forgotten += len(keys)
        return forgotten

    def compact(self, full: bool = False) -> CompactResult:
        """Give the file's free pages back to the file system (after ``clear_exported``, or
        once batches are done) and truncate the WAL; ``full`` rewrites the whole file
        (``VACUUM``: needs free disk about the file's size), refused with ``QueueBusyError``
        while any batch is leased. Outside any transaction; concurrent verbs wait for it."""
        before = self.file_bytes()
        with sqlite_errors(self.path):
            if full:
                held = self._leased_batches()
                if held:
                    raise QueueBusyError(
                        f"queue file {self.path}: {held} batch(es) are leased by a run; "
                        "compact it once no run is working on it (or after --reap-stale, "
                        "when its runs are gone)")
                self.conn.execute("VACUUM")
            else:
                # executescript steps it to the end (execute would free one page a call)
                self.conn.executescript("PRAGMA incremental_vacuum;")
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return CompactResult(file_bytes_before=before, file_bytes_after=self.file_bytes(),
                             ledger_bytes=self.ledger.bytes_on_disk(), full=full)

    def verify_ledger(self) -> int:
        """Open every ledger run the queue file names, verifying each one's checksum;
        ``LedgerDamaged`` names the first that is missing or damaged. Returns the entries."""
        with self._snapshot() as c:  # one snapshot of the run list
            return self.ledger.verify(c)

    def rebuild_ledger(self, labelled: Iterable[tuple[pa.Array | pa.ChunkedArray, str]] = ()
                       ) -> int:
        """Write the ledger anew from what this queue file holds — queued batches, dead
        letters, output rows, each under its config_hash — and ``labelled`` (``(uris,
        config_hash)`` chunks of the parquet output), in one transaction: the damaged or
        missing runs are dropped, and concurrent enqueues wait for it. Returns the entries
        written. A post cleared from every place is not in it (a later enqueue queues it)."""
        t = self.tables
        written = 0
        with self._transaction() as c:
            staged = c.execute(f"SELECT COUNT(*) FROM {t['files']} WHERE state = 'staged'"
                               ).fetchone()[0]
            if staged:  # their posts are in neither the queue file nor the output yet
                raise QueueBusyError(f"queue file {self.path}: {staged} labelled file(s) are "
                                     "not published yet; publish them first (--write-cache)")
            old = [name for (name,) in c.execute(f"SELECT name FROM {t['ledger_runs']}")]
            seq = self._next_seq(c)
            pages = chain(self._batch_uris(c), self._output_uris(c), self._dead_uris(c),
                          ([chunk] for chunk in labelled))  # streamed, a page at a time
            for page in pages:
                for vid, keys, checks in self._by_config_hash(c, page):
                    self.ledger.add(c, keys, checks, vid, seq)
                    written += len(keys)
            c.executemany(f"DELETE FROM {t['ledger_runs']} WHERE name = ?",
                          [(name,) for name in old])
        self.ledger.unlink_runs(old)
        self.merge_ledger()
        return written

    def set_flag(self, name: str) -> None:
        """Mark something done once per queue file (``flag`` reads it)."""
        with self._transaction() as c:
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, '1')",
                      (f"flag:{name}",))

