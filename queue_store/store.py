"""One integration's SQLite queue: input batches with leases, output rows, dead letters.

Verbs, message-queue style. Every verb that writes is atomic: it runs in one
``BEGIN IMMEDIATE`` transaction of its own, or in the caller's (``tx=``, from
``with store.transaction() as tx``), so several verbs can commit together.

- ``enqueue(posts, metadata=None, batch_size=1000, version="", relabel=False, session=None)``
  — validate; queue the posts the ledger has not seen for that version.
- ``remember(uris, version)`` — record posts labelled elsewhere in the ledger, queue nothing.
- ``verify_ledger()`` / ``rebuild_ledger(labelled)`` — check every ledger run's checksum; write
  the ledger anew from the queue file and ``(uris, config_hash)`` of the parquet output.
- ``claim(max_batches=1, lease_seconds=60, owner="", version="")`` — lease pending batches of
  one version (reaps first).
- ``extend(leases, lease_seconds=60)`` — heartbeat: push the expiry of leases still held.
- ``complete(batch_id, lease_id, labelled, failed)`` — fenced ack: typed output rows, retries
  (or dead letters at ``max_attempts``) and the batch's removal.
- ``fail(batch_id, lease_id, reason)`` — fenced nack: the batch back to pending (dead at max).
- ``release(batch_id, lease_id)`` — fenced undo of a claim: pending again, attempt not spent.
- ``bury_undecodable(batch_id, lease_id, reason)`` — fenced: a damaged batch to dead letters.
- ``reap()`` — expired leases, and leases of provably dead holders, back to pending.
- ``requeue_dead(batch_size=1000)`` — dead posts back to pending, fresh attempts.
- export: ``plan_export(max_rows=50000)``, ``export_rows(export_id)``,
  ``bury_export_rows(bad)``, ``export_schema()``, ``save_export_schema(schema)``,
  ``mark_exported(export_id)``, ``clear_exported()`` — see ``parquet.export_output``.
- ``compact(full=False)`` — free pages back to the file system (``full``: rewrite the file,
  refused while batches are leased); ``busy_exporting()`` — why the output may change now.
- reads: ``status(version=None)``, ``pending_versions()``, ``has_pending(version="")``,
  ``dead_letters(limit=20)``, ``dead_reasons(limit=5, version=None)``, ``seen(uris)``.
"""
from __future__ import annotations

import base64
import sqlite3
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from queue_store import codec
from queue_store.fingerprint import fingerprints
from queue_store.ledger import MAX_VID, Ledger
from queue_store.lease_holder import LeaseHolder
from queue_store.models import (ClaimedBatch, ClearResult, CompactResult, CompleteResult,
                                DeadLetter,
                                EnqueueResult, EnqueueSession, ExportPlan, InvalidPost,
                                QueueStatus, ReapResult)
from queue_store.rows.column_types import merge_schema
from queue_store.rows.shapes import POST_COLUMNS, post_of
from queue_store.rows.typed import from_ipc, to_ipc
from queue_store.rows.validation import Validated, as_post_table, split_valid
from queue_store.schema import (BUSY_TIMEOUT_MS, QueueBusyError, QueueFileError, connect,
                                file_identity, storage_error, table_names)

DEFAULT_MAX_ATTEMPTS = 3


def queue_path(data_dir: str | Path, integration: str) -> Path:
    return Path(data_dir) / "queue" / f"{integration}.db"


class Transaction:
    """An open ``BEGIN IMMEDIATE`` transaction of one store (``QueueStore.transaction``)."""

    def __init__(self, store: "QueueStore", cursor: sqlite3.Connection) -> None:
        self.store = store
        self.cursor = cursor


class QueueStore:
    def __init__(self, data_dir: str | Path, integration: str,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS, readonly: bool = False,
                 clock: Callable[[], float] = time.time,
                 busy_timeout_s: float = BUSY_TIMEOUT_MS / 1000) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.integration = integration
        self.tables = table_names(integration)
        self.path = queue_path(data_dir, integration)
        self.max_attempts = max_attempts
        self.clock = clock  # lease arithmetic; tests pass a clock they control
        self.conn, self.store_id = connect(self.path, integration, readonly,
                                           busy_ms=int(busy_timeout_s * 1000))
        self.identity = file_identity(self.path)
        self.ledger = Ledger(self.path.with_suffix(".ledger"), self.tables["ledger_runs"])

    def close(self) -> None:
        self.conn.close()

    # -- transactions ----------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One ``BEGIN IMMEDIATE`` transaction for several verbs (``tx=``). A full or failing
        disk is reported as itself (SQLite has already rolled back then)."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                # An open connection keeps writing to a deleted (or replaced) file's inode,
                # where nobody would ever read it: refuse to commit anything there.
                if file_identity(self.path) != self.identity:
                    raise QueueFileError(f"queue file {self.path} was replaced during the "
                                         "run; it must stay in place while a run uses it")
                yield Transaction(self, self.conn)
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    try:
                        self.conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # already rolled back by SQLite (disk full, I/O error)
                raise
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise
            raise storage_error(self.path, exc) from None
        except sqlite3.DatabaseError as exc:
            raise storage_error(self.path, exc) from None

    @contextmanager
    def _within(self, tx: Transaction | None) -> Iterator[sqlite3.Connection]:
        """The caller's transaction, or a new one of this verb's own."""
        if tx is not None:
            if tx.store is not self:
                raise ValueError("a transaction belongs to the store that opened it")
            yield tx.cursor
            return
        with self.transaction() as own:
            yield own.cursor

    # -- producers -------------------------------------------------------------------------
    def enqueue(self, posts: Any, metadata: Mapping[str, Any] | None = None,
                batch_size: int = 1000, version: str = "", relabel: bool = False,
                session: EnqueueSession | None = None,
                tx: Transaction | None = None) -> EnqueueResult:
        """Validate posts and queue the valid ones for ``version`` (the config_hash that will
        label them) in rows of at most ``batch_size`` posts. ``posts``: anything
        ``as_post_table`` takes, or ``split_valid``'s result (posts validated once for
        several integrations' queues).

        A post this integration has queued before for ``version`` is skipped, and one queued
        only for other versions too — unless ``relabel``. The ledger's decision and the
        insert are one transaction: concurrent enqueues queue each post once per version.
        ``session`` (one per enqueue stage) tells its own repeats from earlier posts."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        clock = _Steps()
        checked = posts if isinstance(posts, Validated) else split_valid(as_post_table(posts))
        result = EnqueueResult(invalid=[InvalidPost(uri=u, reason=r) for u, r in
                                        checked.invalid])
        clock.lap("validate")
        if not checked.valid.num_rows:
            result.step_s = clock.laps
            return result
        with self._within(tx) as c:
            valid = self._admit(c, checked, version, relabel, result, session)
            clock.lap("ledger")
            now = self.clock()
            rows = []
            for start in range(0, valid.num_rows, batch_size):
                chunk = valid.slice(start, batch_size)
                meta = dict(metadata or {}, batch_size=batch_size,
                            actual_batch_size=chunk.num_rows)
                rows.append((codec.dumps_posts(chunk), codec.dumps(meta), chunk.num_rows,
                             version, now))
            clock.lap("encode")
            c.executemany(f"INSERT INTO {self.tables['input']} (payload, metadata, n_posts, "
                          "version, created_at) VALUES (?, ?, ?, ?, ?)", rows)
            clock.lap("insert")
        clock.lap("commit")
        result.enqueued_posts = valid.num_rows
        result.enqueued_batches = len(rows)
        if tx is None:
            self.merge_ledger()
            clock.lap("ledger")
        result.step_s = clock.laps
        return result

    def remember(self, uris: pa.Array | pa.ChunkedArray, version: str,
                 tx: Transaction | None = None) -> int:
        """Record posts labelled elsewhere (e.g. found in the parquet output when this queue
        file is newer than it) as queued for ``version``, without queueing them; returns
        how many were new to the ledger."""
        uris = pc.unique(uris.drop_null())
        with self._within(tx) as c:
            keys, checks = fingerprints(uris)
            vid = self._vid(c, version)
            new = ~self.ledger.lookup(c, keys, checks, vid).same
            self.ledger.add(c, keys[new], checks[new], vid, self._next_seq(c))
        if tx is None:
            self.merge_ledger()
        return int(new.sum())

    def seen(self, uris: Sequence[str], version: str | None = None) -> list[bool]:
        """Whether each uri was ever queued for ``version`` (or for any version)."""
        keys, checks = fingerprints(pa.array(list(uris), pa.string()))
        self.conn.execute("BEGIN")  # one snapshot of the run list
        try:
            row = self.conn.execute(f"SELECT vid FROM {self.tables['versions']} WHERE "
                                    "version = ?", (version,)).fetchone()
            hits = self.ledger.lookup(self.conn, keys, checks, row[0] if row else -1)
        finally:
            self.conn.execute("COMMIT")
        return (hits.same | hits.other if version is None else hits.same).tolist()

    def merge_ledger(self) -> int:
        """Merge the ledger's runs while a tier has ``FANOUT`` of them (outside any
        transaction; each merged run replaces its sources in a short one). Returns merges."""
        merges = 0
        while True:
            sources = self.ledger.merge_candidates(self.conn)
            if not sources:
                return merges
            runs = [r for r in self.ledger.runs(self.conn) if r.name in sources]
            tmp, n = self.ledger.write_merged(runs)
            with self.transaction() as tx:
                swapped = self.ledger.swap_in(tx.cursor, tmp, n, sources)
            if not swapped:  # another process merged them first
                tmp.unlink(missing_ok=True)
                return merges
            self.ledger.unlink_runs(sources)
            merges += 1

    def verify_ledger(self) -> int:
        """Open every ledger run the queue file names, verifying each one's checksum;
        ``LedgerDamaged`` names the first that is missing or damaged. Returns the entries."""
        self.conn.execute("BEGIN")  # one snapshot of the run list
        try:
            return self.ledger.verify(self.conn)
        finally:
            self.conn.execute("COMMIT")

    def rebuild_ledger(self, labelled: Iterable[tuple[pa.Array | pa.ChunkedArray, str]] = ()
                       ) -> int:
        """Write the ledger anew from what this queue file holds — queued batches, dead
        letters, output rows, each under its version — and ``labelled`` (``(uris,
        config_hash)`` chunks of the parquet output), in one transaction: the damaged or
        missing runs are dropped, and concurrent enqueues wait for it. Returns the entries
        written. A post cleared from every place is not in it (a later enqueue queues it)."""
        t = self.tables
        written = 0
        with self.transaction() as tx:
            c = tx.cursor
            old = [name for (name,) in c.execute(f"SELECT name FROM {t['ledger_runs']}")]
            seq = self._next_seq(c)

            def record(chunks: list[tuple[pa.Array | pa.ChunkedArray, str]]) -> None:
                nonlocal written
                for vid, keys, checks in self._by_version(c, chunks):
                    self.ledger.add(c, keys, checks, vid, seq)
                    written += len(keys)

            for page in self._pages(c, f"SELECT id, payload, version FROM {t['input']}"):
                record([(codec.loads_posts(p).column("uri"), v) for _, p, v in page])
            for page in self._pages(c, f"SELECT id, payload, version FROM {t['output']}"):
                record([(from_ipc(p).column("uri"), v) for _, p, v in page])
            for page in self._pages(c, f"SELECT id, uri, version FROM {t['dead']} "
                                       "WHERE uri IS NOT NULL", size=50_000):
                record(_uris_by_version(page))
            for column, version in labelled:
                record([(column, version)])
            c.executemany(f"DELETE FROM {t['ledger_runs']} WHERE name = ?",
                          [(name,) for name in old])
        self.ledger.unlink_runs(old)
        self.merge_ledger()
        return written

    def _admit(self, c: Any, checked: Validated, version: str, relabel: bool,
               result: EnqueueResult, session: EnqueueSession | None) -> pa.Table:
        """The posts to queue (the rest counted in ``result``), recorded in the ledger."""
        valid, keys, checks = checked.valid, checked.keys, checked.checks
        vid = self._vid(c, version)
        hits = self.ledger.lookup(c, keys, checks, vid)
        mine = np.isin(hits.same_seq, list(session.seqs)) if session else np.zeros(
            len(keys), bool)
        result.skipped_duplicate += int((hits.same & mine).sum())
        result.skipped_known += int((hits.same & ~mine).sum())
        elsewhere = hits.other & ~hits.same
        if relabel:
            result.relabelled += int(elsewhere.sum())
            take = ~hits.same
        else:
            result.skipped_other_version += int(elsewhere.sum())
            take = ~(hits.same | hits.other)
        seq = self._next_seq(c)
        self.ledger.add(c, keys[take], checks[take], vid, seq)
        if session is not None:
            session.seqs.add(seq)
        return valid if take.all() else valid.filter(pa.array(take))

    def _vid(self, c: Any, version: str) -> int:
        """The small id ledger entries carry for a config_hash (made on first use)."""
        t = self.tables["versions"]
        row = c.execute(f"SELECT vid FROM {t} WHERE version = ?", (version,)).fetchone()
        if row is None:
            row = c.execute(f"INSERT INTO {t} (version) VALUES (?) RETURNING vid",
                            (version,)).fetchone()
        if row[0] > MAX_VID:  # ledger entries keep a version id in 15 bits
            raise QueueFileError(f"queue file {self.path}: more than {MAX_VID:,} config "
                                 "versions")
        return row[0]

    def _next_seq(self, c: Any) -> int:
        row = c.execute("INSERT INTO meta(key, value) VALUES ('ledger_seq', '1') "
                        "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1 "
                        "RETURNING value").fetchone()
        return int(row[0])

    # -- consumers -------------------------------------------------------------------------
    def claim(self, max_batches: int = 1, lease_seconds: float = 60, owner: str = "",
              version: str = "", tx: Transaction | None = None) -> list[ClaimedBatch]:
        """Lease up to ``max_batches`` pending batches queued for ``version`` (a run labels
        only what was queued for its config_hash). Payloads are handed on as stored."""
        now = self.clock()
        lease_id = uuid.uuid4().hex
        t = self.tables["input"]
        with self._within(tx) as c:
            self._reap(c, now)
            rows = c.execute(
                f"UPDATE {t} SET status = 'processing', lease_id = ?, lease_owner = ?, "
                "lease_expires = ?, attempt = attempt + 1 "
                f"WHERE id IN (SELECT id FROM {t} WHERE status = 'pending' AND version = ? "
                "ORDER BY id LIMIT ?) RETURNING id, payload, attempt, n_posts",
                (lease_id, owner, now + lease_seconds, version, max_batches)).fetchall()
        return [ClaimedBatch.model_construct(batch_id=batch_id, lease_id=lease_id,
                                             attempt=attempt, n_posts=n_posts,
                                             version=version, payload=payload)
                for batch_id, payload, attempt, n_posts in sorted(rows)]

    def extend(self, leases: Sequence[tuple[int, str]], lease_seconds: float = 60,
               tx: Transaction | None = None) -> int:
        """Push the expiry of each (batch_id, lease_id) still held; returns how many were."""
        if not leases:
            return 0
        expires = self.clock() + lease_seconds
        with self._within(tx) as c:
            before = c.total_changes
            c.executemany(f"UPDATE {self.tables['input']} SET lease_expires = ? "
                          "WHERE id = ? AND lease_id = ? AND status = 'processing'",
                          [(expires, b, lease) for b, lease in leases])
            return c.total_changes - before

    def complete(self, batch_id: int, lease_id: str, labelled: pa.Table | None,
                 failed: Sequence[tuple[dict, str]],
                 tx: Transaction | None = None) -> CompleteResult:
        """Fenced ack: ``labelled`` holds one typed row per labelled post (the post's fields,
        then its output columns), ``failed`` is ``(post, reason)`` per failed post.

        Together they must account for each of the batch's posts once (its stored
        ``n_posts``; the payload is not decoded again). The rows are stored as one Arrow
        IPC stream; failed posts go back as a retry batch, or to dead letters at
        ``max_attempts``. Returns ``accepted=False`` and writes nothing when ``lease_id`` no
        longer holds the batch."""
        n_labelled = 0 if labelled is None else labelled.num_rows
        missing = [f for f in POST_COLUMNS if n_labelled and f not in labelled.column_names]
        if missing:
            raise ValueError(f"complete({batch_id}): labelled rows lack {missing}")
        t = self.tables
        with self._within(tx) as c:
            row = c.execute(f"SELECT attempt, n_posts, version FROM {t['input']} WHERE id = ? "
                            "AND lease_id = ? AND status = 'processing'",
                            (batch_id, lease_id)).fetchone()
            if row is None:
                return CompleteResult(accepted=False)
            attempt, n_posts, version = row
            if n_labelled + len(failed) != n_posts:
                raise ValueError(f"complete({batch_id}) must account for each of its "
                                 f"{n_posts} posts once: got {n_labelled} labelled and "
                                 f"{len(failed)} failed")
            uris = [*(labelled.column("uri").chunks if n_labelled else []),
                    pa.array([post["uri"] for post, _ in failed], pa.string())]
            if pc.count_distinct(pa.chunked_array(uris, pa.string())).as_py() != n_posts:
                raise ValueError(f"complete({batch_id}) names a post twice")
            if n_labelled:
                c.execute(f"INSERT INTO {t['output']} (batch_id, version, payload, n_rows, "
                          "created_at) VALUES (?, ?, ?, ?, ?)",
                          (batch_id, version, to_ipc(labelled), n_labelled, self.clock()))
            retried, dead = self._retry_or_bury(c, batch_id, list(failed), attempt, version)
            c.execute(f"DELETE FROM {t['input']} WHERE id = ?", (batch_id,))
        return CompleteResult(accepted=True, labelled=n_labelled, retried=retried,
                              dead_lettered=dead)

    def fail(self, batch_id: int, lease_id: str, reason: str,
             tx: Transaction | None = None) -> bool:
        """Fenced nack of a whole batch: back to pending, or dead once max_attempts is used."""
        def nack(c: sqlite3.Cursor, payload: bytes, attempt: int, version: str) -> None:
            if attempt < self.max_attempts:
                self._back_to_pending(c, batch_id)
            else:
                self._bury_batch(c, batch_id, payload, reason, attempt, version)
        return self._if_held(tx, batch_id, lease_id, nack)

    def release(self, batch_id: int, lease_id: str, tx: Transaction | None = None) -> bool:
        """Fenced undo of a claim that was never worked on: pending again, attempt not spent."""
        with self._within(tx) as c:
            return c.execute(
                f"UPDATE {self.tables['input']} SET status = 'pending', lease_id = NULL, "
                "lease_owner = NULL, lease_expires = NULL, attempt = attempt - 1 "
                "WHERE id = ? AND lease_id = ? AND status = 'processing'",
                (batch_id, lease_id)).rowcount == 1

    def bury_undecodable(self, batch_id: int, lease_id: str, reason: str,
                         tx: Transaction | None = None) -> bool:
        """Fenced: a claimed batch whose payload cannot be decoded goes to dead letters."""
        def bury(c: sqlite3.Cursor, payload: bytes, attempt: int, version: str) -> None:
            self._dead_letter_raw(c, batch_id, payload, reason, attempt, version)
        return self._if_held(tx, batch_id, lease_id, bury)

    def _if_held(self, tx: Transaction | None, batch_id: int, lease_id: str,
                 act: Callable[[sqlite3.Cursor, bytes, int, str], None]) -> bool:
        """``act(cursor, payload, attempt, version)`` on the batch if ``lease_id`` still
        holds it (True), else nothing (False: the lease was lost)."""
        with self._within(tx) as c:
            held = self._held(c, batch_id, lease_id)
            if held is None:
                return False
            act(c, *held)
        return True

    def reap(self, tx: Transaction | None = None) -> ReapResult:
        """Return expired leases to pending (or dead letters once max_attempts is used)."""
        with self._within(tx) as c:
            return self._reap(c, self.clock())

    def requeue_dead(self, batch_size: int = 1000) -> int:
        """Move decodable dead posts back to pending with a fresh attempt count, each for the
        version it was queued for (one transaction per batch)."""
        moved = 0
        t = self.tables
        while True:
            with self.transaction() as tx:
                c = tx.cursor
                first = c.execute(f"SELECT version FROM {t['dead']} WHERE decodable = 1 "
                                  "ORDER BY id LIMIT 1").fetchone()
                if first is None:
                    return moved
                rows = c.execute(f"SELECT id, payload FROM {t['dead']} WHERE decodable = 1 "
                                 "AND version = ? ORDER BY id LIMIT ?",
                                 (first[0], batch_size)).fetchall()
                posts = codec.posts_table([codec.loads(p) for _, p in rows])
                meta = {"requeued_from_dead": True, "batch_size": batch_size,
                        "actual_batch_size": posts.num_rows}
                c.execute(f"INSERT INTO {t['input']} (payload, metadata, n_posts, version, "
                          "created_at) VALUES (?, ?, ?, ?, ?)",
                          (codec.dumps_posts(posts), codec.dumps(meta), posts.num_rows,
                           first[0], self.clock()))
                c.executemany(f"DELETE FROM {t['dead']} WHERE id = ?", [(i,) for i, _ in rows])
                moved += len(rows)

    # -- export bookkeeping (parquet.export_output) ------------------------------------------
    # An export is *planned* (rows tagged with a new export id), then its files are written
    # under names derived from that id, then it is marked *written*. A crash anywhere leaves a
    # planned export that the next ``plan_export`` returns again: the rerun rewrites the same
    # file names with the same rows, so nothing is duplicated. Only rows of written exports
    # are ever cleared.
    def plan_export(self, max_rows: int = 50_000, tx: Transaction | None = None
                    ) -> ExportPlan | None:
        """Reserve up to ~max_rows unexported rows (whole output rows); resumes a crashed plan."""
        t = self.tables
        with self._within(tx) as c:
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

    def bury_export_rows(self, bad: Sequence[tuple[int, int | None, str]],
                         tx: Transaction | None = None) -> int:
        """Move output rows that cannot be exported — ``(output row id, index in its table,
        reason)``; index None for a stored table that cannot be read at all — to dead letters
        (``--requeue-dead`` relabels them). The rest of each stored table stays for export."""
        t = self.tables
        by_row: dict[int, dict[int | None, str]] = {}
        for row_id, index, reason in bad:
            by_row.setdefault(row_id, {})[index] = reason
        with self._within(tx) as c:
            for row_id, lines in by_row.items():
                found = c.execute(f"SELECT batch_id, version, payload FROM {t['output']} "
                                  "WHERE id = ?", (row_id,)).fetchone()
                if found is None:
                    continue
                batch_id, version, payload = found
                if None in lines:  # the stored table itself is damaged: kept as it is
                    self._dead_letter_raw(c, batch_id, payload, lines[None], 0, version,
                                          table="output", row_id=row_id)
                    continue
                table = from_ipc(payload)
                rows = table.to_pylist()
                for index, reason in lines.items():
                    post = post_of(rows[index])
                    self._insert_dead(c, [(post, reason)], 0, version, batch_id)
                keep = [i for i in range(table.num_rows) if i not in lines]
                if keep:
                    c.execute(f"UPDATE {t['output']} SET payload = ?, n_rows = ? WHERE id = ?",
                              (to_ipc(table.take(pa.array(keep, pa.int64()))), len(keep),
                               row_id))
                else:
                    c.execute(f"DELETE FROM {t['output']} WHERE id = ?", (row_id,))
        return len(bad)

    def export_schema(self) -> pa.Schema | None:
        """The output's column types, fixed by the first rows to give each a type."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'export_schema'").fetchone()
        return _schema_of(row[0]) if row else None

    def save_export_schema(self, schema: pa.Schema, tx: Transaction | None = None
                           ) -> pa.Schema:
        """Fix the output's column types: merged into what is stored (the first to give a
        column a type wins, concurrent runs included); returns the stored result."""
        with self._within(tx) as c:
            row = c.execute("SELECT value FROM meta WHERE key = 'export_schema'").fetchone()
            merged = merge_schema(_schema_of(row[0]) if row else None, schema)
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('export_schema', ?)",
                      (base64.b64encode(merged.serialize().to_pybytes()).decode(),))
        return merged

    def mark_exported(self, export_id: int, tx: Transaction | None = None) -> None:
        with self._within(tx) as c:
            c.execute(f"UPDATE {self.tables['exports']} SET state = 'written' WHERE id = ?",
                      (export_id,))

    def clear_exported(self, tx: Transaction | None = None) -> int:
        """Delete output rows whose parquet is written; rows added since then survive."""
        t = self.tables
        with self._within(tx) as c:
            return c.execute(f"DELETE FROM {t['output']} WHERE export_id IN "
                             f"(SELECT id FROM {t['exports']} WHERE state = 'written')").rowcount

    def clear_input(self, tx: Transaction | None = None) -> ClearResult:
        """Delete every queued batch and dead letter, and forget their posts in the ledger
        under the versions they were queued for (a later enqueue of that version queues them
        again; their labels under other versions stay known); refused with
        ``QueueBusyError`` while a run that may be alive holds a lease (the message names
        it; leases of provably dead runs are taken back first). One transaction."""
        t = self.tables
        with self._within(tx) as c:
            self._refuse_if_leased(c)
            result = ClearResult()
            for page in self._pages(c, f"SELECT id, payload, version FROM {t['input']}"):
                result.input_posts += self._forget(
                    c, [(codec.loads_posts(p).column("uri"), v) for _, p, v in page])
            result.input_batches = c.execute(f"DELETE FROM {t['input']}").rowcount
            for page in self._pages(c, f"SELECT id, uri, version FROM {t['dead']} "
                                       "WHERE uri IS NOT NULL", size=50_000):
                result.dead_posts += self._forget(c, _uris_by_version(page))
            c.execute(f"DELETE FROM {t['dead']}")
        return result

    def clear_output(self, tx: Transaction | None = None) -> ClearResult:
        """Delete every output row — exported ones (their parquet stays) and ones not yet
        exported (their labels are lost: their posts are forgotten in the ledger, so a later
        enqueue queues them again). Refused while leased or with an unfinished export."""
        t = self.tables
        with self._within(tx) as c:
            self._refuse_if_leased(c)
            busy = self.busy_exporting()  # leases refused above: an unfinished export
            if busy:
                raise QueueBusyError(f"queue file {self.path}: {busy}")
            result = ClearResult()
            for page in self._pages(c, f"SELECT id, payload, version FROM {t['output']} "
                                       "WHERE export_id IS NULL"):
                result.unexported_rows += self._forget(
                    c, [(from_ipc(p).column("uri"), v) for _, p, v in page])
            result.exported_rows = c.execute(
                f"SELECT COALESCE(SUM(n_rows), 0) FROM {t['output']} WHERE export_id IS NOT "
                "NULL").fetchone()[0]
            c.execute(f"DELETE FROM {t['output']}")
        return result

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

    def _forget(self, c: Any, uris: list[tuple[pa.Array | pa.ChunkedArray, str]]) -> int:
        """Forget posts in the ledger, each under the version it was queued for (one run
        file per version); returns how many."""
        forgotten = 0
        for vid, keys, checks in self._by_version(c, uris):
            self.ledger.forget(c, keys, checks, vid, self._next_seq(c))
            forgotten += len(keys)
        return forgotten

    def _by_version(self, c: Any, uris: list[tuple[pa.Array | pa.ChunkedArray, str]]
                    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(version id, keys, checks)``: the fingerprints of uri columns, per version."""
        by_version: dict[str, list[pa.Array | pa.ChunkedArray]] = {}
        for column, version in uris:
            by_version.setdefault(version, []).append(column.cast(pa.string()))
        for version, columns in by_version.items():
            keys, checks = fingerprints(pc.drop_null(pa.chunked_array(columns, pa.string())))
            yield self._vid(c, version), keys, checks

    @staticmethod
    def _pages(c: Any, select: str, params: tuple[Any, ...] = (), size: int = 256
               ) -> Iterator[list[tuple[Any, Any]]]:
        """``select`` (``id`` first; ``params`` for its placeholders) in pages of ``size``
        rows, in id order."""
        last = 0
        where = " AND " if " WHERE " in select else " WHERE "
        while page := c.execute(f"{select}{where}id > ? ORDER BY id LIMIT ?",
                                (*params, last, size)).fetchall():
            yield page
            last = page[-1][0]

    def compact(self, full: bool = False) -> CompactResult:
        """Give the file's free pages back to the file system (after ``clear_exported``, or
        once batches are done) and truncate the WAL; ``full`` rewrites the whole file
        (``VACUUM``: needs free disk about the file's size), refused with ``QueueBusyError``
        while any batch is leased. Outside any transaction; concurrent verbs wait for it."""
        before = self.file_bytes()
        try:
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
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise
            raise storage_error(self.path, exc) from None
        return CompactResult(file_bytes_before=before, file_bytes_after=self.file_bytes(),
                             ledger_bytes=self.ledger.bytes_on_disk(), full=full)

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

    def _leased_batches(self) -> int:
        return self.conn.execute(f"SELECT COUNT(*) FROM {self.tables['input']} WHERE status = "
                                 "'processing'").fetchone()[0]

    def file_bytes(self) -> int:
        """The queue file and its WAL, on disk."""
        wal = self.path.with_name(self.path.name + "-wal")
        return sum(p.stat().st_size for p in (self.path, wal) if p.exists())

    def set_flag(self, name: str, tx: Transaction | None = None) -> None:
        """Mark something done once per queue file (``flag`` reads it)."""
        with self._within(tx) as c:
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, '1')",
                      (f"flag:{name}",))

    # -- reads -----------------------------------------------------------------------------
    def flag(self, name: str) -> bool:
        return self.conn.execute("SELECT 1 FROM meta WHERE key = ?", (f"flag:{name}",)
                                 ).fetchone() is not None

    def has_pending(self, version: str = "") -> bool:
        """Is any batch of ``version`` waiting to be claimed? (one index probe)"""
        return self.conn.execute(f"SELECT 1 FROM {self.tables['input']} WHERE status = "
                                 "'pending' AND version = ? LIMIT 1", (version,)
                                 ).fetchone() is not None

    def status(self, version: str | None = None) -> QueueStatus:
        """Batches and posts per state, dead letters, output rows exported/unexported — of
        every version, or of one config_hash (``pending_other_versions`` counts the rest)."""
        t = self.tables
        st = QueueStatus(integration=self.integration)
        mine, args = ("version = ?", (version,)) if version is not None else ("1", ())
        for status, same, batches, posts in self.conn.execute(
                f"SELECT status, {mine}, COUNT(*), COALESCE(SUM(n_posts), 0) FROM {t['input']} "
                "GROUP BY 1, 2", args):
            if same:
                setattr(st, f"{status}_batches", batches)
                setattr(st, f"{status}_posts", posts)
            elif status == "pending":
                st.pending_other_versions = posts
        st.next_lease_expiry = self.conn.execute(
            f"SELECT MIN(lease_expires) FROM {t['input']} WHERE status = 'processing' AND "
            f"{mine}", args).fetchone()[0]
        for decodable, n in self.conn.execute(
                f"SELECT decodable, COUNT(*) FROM {t['dead']} WHERE {mine} GROUP BY decodable",
                args):
            if decodable:
                st.dead_posts = n
            else:
                st.dead_undecodable_rows = n
        for exported, n in self.conn.execute(
                f"SELECT export_id IS NOT NULL AND export_id IN "
                f"(SELECT id FROM {t['exports']} WHERE state = 'written'), "
                f"COALESCE(SUM(n_rows), 0) FROM {t['output']} WHERE {mine} GROUP BY 1", args):
            if exported:
                st.output_rows_exported = n
            else:
                st.output_rows_unexported = n
        st.file_bytes, st.ledger_bytes = self.file_bytes(), self.ledger.bytes_on_disk()
        return st

    def remaining_posts(self, version: str = "") -> int:
        """Posts queued for ``version`` and not done yet (pending or leased)."""
        return self.conn.execute(f"SELECT COALESCE(SUM(n_posts), 0) FROM "
                                 f"{self.tables['input']} WHERE version = ?",
                                 (version,)).fetchone()[0]

    def pending_versions(self) -> dict[str, int]:
        """Pending posts per config_hash they were queued for."""
        return dict(self.conn.execute(
            f"SELECT version, SUM(n_posts) FROM {self.tables['input']} WHERE status = "
            "'pending' GROUP BY version ORDER BY version").fetchall())

    def dead_letters(self, limit: int = 20) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters with their reasons."""
        rows = self.conn.execute(f"SELECT id, uri, reason, attempt, version FROM "
                                 f"{self.tables['dead']} ORDER BY id LIMIT ?",
                                 (limit,)).fetchall()
        return [DeadLetter(id=i, uri=u, reason=r, attempt=a, version=v)
                for i, u, r, a, v in rows]

    def dead_reasons(self, limit: int = 5, version: str | None = None) -> list[tuple[str, int]]:
        """The most frequent dead-letter reasons with their counts (of one version, or all)."""
        mine, args = ("version = ?", (version,)) if version is not None else ("1", ())
        return [(r, n) for r, n in self.conn.execute(
            f"SELECT reason, COUNT(*) AS n FROM {self.tables['dead']} WHERE {mine} "
            "GROUP BY reason ORDER BY n DESC, reason LIMIT ?", (*args, limit))]

    # -- internals -------------------------------------------------------------------------
    def _held(self, c: Any, batch_id: int, lease_id: str) -> tuple[bytes, int, str] | None:
        return c.execute(f"SELECT payload, attempt, version FROM {self.tables['input']} "
                         "WHERE id = ? AND lease_id = ? AND status = 'processing'",
                         (batch_id, lease_id)).fetchone()

    def _back_to_pending(self, c: Any, batch_id: int) -> None:
        c.execute(f"UPDATE {self.tables['input']} SET status = 'pending', lease_id = NULL, "
                  "lease_owner = NULL, lease_expires = NULL WHERE id = ?", (batch_id,))

    def _reap(self, c: Any, now: float) -> ReapResult:
        t = self.tables["input"]
        expired = c.execute(f"SELECT id, payload, attempt, version FROM {t} WHERE status = "
                            "'processing' AND lease_expires < ?", (now,)).fetchall()
        result = ReapResult()
        # Leases of runs that provably died on this host: no need to wait for their expiry.
        holders = c.execute(f"SELECT DISTINCT lease_owner FROM {t} WHERE status = 'processing' "
                            "AND lease_expires >= ?", (now,)).fetchall()
        for (owner,) in holders:
            holder = LeaseHolder.parse(owner)
            if holder is not None and holder.provably_dead():
                rows = c.execute(f"SELECT id, payload, attempt, version FROM {t} WHERE "
                                 "status = 'processing' AND lease_owner = ? AND "
                                 "lease_expires >= ?", (owner, now)).fetchall()
                result.dead_holder_batches += len(rows)
                expired.extend(rows)
        for batch_id, payload, attempt, version in expired:
            if attempt < self.max_attempts:
                self._back_to_pending(c, batch_id)
                result.requeued_batches += 1
                continue
            self._bury_batch(c, batch_id, payload, f"lease expired on attempt {attempt} "
                             "(worker lost each time)", attempt, version)
            result.dead_lettered_batches += 1
        return result

    def _retry_or_bury(self, c: Any, batch_id: int, failed: list[tuple[dict, str]],
                       attempt: int, version: str) -> tuple[int, int]:
        if not failed:
            return 0, 0
        if attempt >= self.max_attempts:
            self._insert_dead(c, failed, attempt, version, batch_id)
            return 0, len(failed)
        posts = [p for p, _ in failed]
        meta = {"retry_of": batch_id, "last_reasons": sorted({r for _, r in failed})[:5],
                "batch_size": len(posts), "actual_batch_size": len(posts)}
        c.execute(f"INSERT INTO {self.tables['input']} (payload, metadata, n_posts, version, "
                  "attempt, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                  (codec.dumps_posts(codec.posts_table(posts)), codec.dumps(meta), len(posts),
                   version, attempt, self.clock()))
        return len(failed), 0

    def _bury_batch(self, c: Any, batch_id: int, payload: bytes, reason: str, attempt: int,
                    version: str) -> None:
        """Every post of an input batch to dead letters (the payload itself if it cannot be
        decoded), and the batch removed."""
        try:
            posts = codec.loads_posts(payload).to_pylist()
        except codec.PayloadError as exc:
            self._dead_letter_raw(c, batch_id, payload, f"{reason}; {exc}", attempt, version)
            return
        self._insert_dead(c, [(p, reason) for p in posts], attempt, version, batch_id)
        c.execute(f"DELETE FROM {self.tables['input']} WHERE id = ?", (batch_id,))

    def _insert_dead(self, c: Any, failed: Sequence[tuple[dict, str]], attempt: int,
                     version: str, batch_id: int) -> None:
        now = self.clock()
        c.executemany(f"INSERT INTO {self.tables['dead']} (uri, payload, decodable, reason, "
                      "attempt, version, source_batch_id, created_at) "
                      "VALUES (?, ?, 1, ?, ?, ?, ?, ?)",
                      [(p["uri"], codec.dumps(post_of(p)), r, attempt, version, batch_id, now)
                       for p, r in failed])

    def _dead_letter_raw(self, c: Any, batch_id: int, payload: Any, reason: str, attempt: int,
                         version: str, table: str = "input", row_id: int | None = None
                         ) -> None:
        """A stored row that cannot be decoded, kept whole in dead letters (never requeued),
        and removed from its table."""
        c.execute(f"INSERT INTO {self.tables['dead']} (uri, payload, decodable, reason, attempt, "
                  "version, source_batch_id, created_at) VALUES (NULL, ?, 0, ?, ?, ?, ?, ?)",
                  (payload, reason, attempt, version, batch_id, self.clock()))
        c.execute(f"DELETE FROM {self.tables[table]} WHERE id = ?",
                  (batch_id if row_id is None else row_id,))


class _Steps:
    """Seconds spent per named step (laps of a ``perf_counter`` clock)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.laps[step] = self.laps.get(step, 0.0) + now - self._last
        self._last = now


def _uris_by_version(rows: Sequence[tuple[Any, str, str]]) -> list[tuple[pa.Array, str]]:
    """``(id, uri, version)`` rows as one uri column per version."""
    by_version: dict[str, list[str]] = {}
    for _, uri, version in rows:
        by_version.setdefault(version, []).append(uri)
    return [(pa.array(uris, pa.string()), v) for v, uris in by_version.items()]


def _schema_of(value: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(value)))
