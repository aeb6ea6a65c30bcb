"""An open queue file: its connection, its transactions, and the row operations that more than
one verb uses — each SQL statement written once here, composed by the verbs in ``lease.py``
(the queue core), ``exports.py``, ``maintenance.py`` and ``reads.py``.

A batch row of the input table is ``pending`` or leased (``processing``, with a lease id, its
holder and an expiry). ``config_hash`` is the label version a batch was queued for (the
file's ``version`` columns hold it).
"""
from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from queue_store import codec
from queue_store.fingerprint import fingerprints
from queue_store.ledger import MAX_VID, Ledger
from queue_store.models import ReapResult
from queue_store.rows.shapes import post_of
from queue_store.schema import (BUSY_TIMEOUT_MS, QueueFileError, connect, file_identity,
                                has_table, storage_error, table_names)


def queue_path(data_dir: str | Path, integration: str) -> Path:
    return Path(data_dir) / "queue" / f"{integration}.db"


@contextmanager
def sqlite_errors(path: Path) -> Iterator[None]:
    """SQLite failures as one line naming the file; a lock held too long stays itself (the
    caller may retry)."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise
        raise storage_error(path, exc) from None
    except sqlite3.DatabaseError as exc:
        raise storage_error(path, exc) from None


class QueueFile:
    """One integration's queue file, opened. ``max_attempts`` (``QueueConfig``): claims a
    batch gets before its posts go to dead letters; a read-only open takes none."""

    def __init__(self, data_dir: str | Path, integration: str, *,
                 max_attempts: int | None = None, readonly: bool = False,
                 clock: Callable[[], float] = time.time,
                 busy_timeout_s: float = BUSY_TIMEOUT_MS / 1000) -> None:
        if not readonly and (max_attempts is None or max_attempts < 1):
            raise ValueError("a writable queue store needs max_attempts >= 1 "
                             "(QueueConfig.max_attempts)")
        self.integration = integration
        self.tables = table_names(integration)
        self.path = queue_path(data_dir, integration)
        self.max_attempts = max_attempts
        self.clock = clock  # lease arithmetic; tests pass a clock they control
        self.conn, self.store_id = connect(self.path, integration, readonly,
                                           busy_ms=int(busy_timeout_s * 1000))
        self.identity = file_identity(self.path)
        # A queue file of this format written before completions recorded files, opened
        # read-only, has no files table (a writable open adds it): it records none.
        self.records_files = not readonly or has_table(self.conn, self.tables["files"])
        self.ledger = Ledger(self.path.with_suffix(".ledger"), self.tables["ledger_runs"])
        self.reaped = ReapResult()  # what this open store's reaps took back (LeaseCore.reap)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction (each writing verb runs in one of its own). A
        full or failing disk is reported as itself (SQLite has already rolled back then)."""
        with sqlite_errors(self.path):
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                # An open connection keeps writing to a deleted (or replaced) file's inode,
                # where nobody would ever read it: refuse to commit anything there.
                if file_identity(self.path) != self.identity:
                    raise QueueFileError(f"queue file {self.path} was replaced during the "
                                         "run; it must stay in place while a run uses it")
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    try:
                        self.conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # already rolled back by SQLite (disk full, I/O error)
                raise

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent view (of the ledger's run list, say)."""
        self.conn.execute("BEGIN")
        try:
            yield self.conn
        finally:
            self.conn.execute("COMMIT")

    # -- input batches ---------------------------------------------------------------------
    def _insert_batches(self, c: Any, batches: Sequence[tuple[pa.Table, dict[str, Any]]],
                        config_hash: str, attempt: int = 0) -> None:
        """Queue ``(posts, metadata)`` batches for ``config_hash``, pending, having used
        ``attempt`` claims (a retry keeps its count)."""
        now = self.clock()
        c.executemany(f"INSERT INTO {self.tables['input']} (payload, metadata, n_posts, "
                      "version, attempt, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                      [(codec.dumps_posts(posts), codec.dumps(meta), posts.num_rows,
                        config_hash, attempt, now) for posts, meta in batches])

    def _held(self, c: Any, batch_id: int, lease_id: str, columns: str) -> tuple | None:
        """``columns`` of the batch if ``lease_id`` still holds it (the fence of every ack)."""
        return c.execute(f"SELECT {columns} FROM {self.tables['input']} WHERE id = ? AND "
                         "lease_id = ? AND status = 'processing'",
                         (batch_id, lease_id)).fetchone()

    def _unlease(self, c: Any, batch_id: int, lease_id: str | None = None,
                 refund: bool = False) -> bool:
        """The batch pending again (fenced by ``lease_id`` when given); ``refund``: the claim
        did not count as an attempt. Returns whether it was."""
        fence, args = ("AND lease_id = ? AND status = 'processing'", (lease_id,)) \
            if lease_id is not None else ("", ())
        return c.execute(f"UPDATE {self.tables['input']} SET status = 'pending', "
                         "lease_id = NULL, lease_owner = NULL, lease_expires = NULL, "
                         f"attempt = attempt - ? WHERE id = ? {fence}",
                         (int(refund), batch_id, *args)).rowcount == 1

    def _delete(self, c: Any, table: str, row_id: int) -> None:
        c.execute(f"DELETE FROM {self.tables[table]} WHERE id = ?", (row_id,))

    def _leased(self, c: Any, where: str = "1", args: tuple = ()) -> list[tuple]:
        """``(id, payload, attempt, version)`` of leased batches matching ``where``."""
        return c.execute(f"SELECT id, payload, attempt, version FROM {self.tables['input']} "
                         f"WHERE status = 'processing' AND {where}", args).fetchall()

    def _leased_batches(self) -> int:
        return self.conn.execute(f"SELECT COUNT(*) FROM {self.tables['input']} WHERE status = "
                                 "'processing'").fetchone()[0]

    # -- dead letters ----------------------------------------------------------------------
    def _insert_dead(self, c: Any, failed: Sequence[tuple[dict, str]], attempt: int,
                     config_hash: str, batch_id: int) -> None:
        now = self.clock()
        c.executemany(f"INSERT INTO {self.tables['dead']} (uri, payload, decodable, reason, "
                      "attempt, version, source_batch_id, created_at) "
                      "VALUES (?, ?, 1, ?, ?, ?, ?, ?)",
                      [(p["uri"], codec.dumps(post_of(p)), r, attempt, config_hash, batch_id,
                        now) for p, r in failed])

    def _dead_letter_raw(self, c: Any, batch_id: int, payload: Any, reason: str, attempt: int,
                         config_hash: str, table: str = "input", row_id: int | None = None
                         ) -> None:
        """A stored row that cannot be decoded, kept whole in dead letters (never requeued),
        and removed from its table."""
        c.execute(f"INSERT INTO {self.tables['dead']} (uri, payload, decodable, reason, attempt, "
                  "version, source_batch_id, created_at) VALUES (NULL, ?, 0, ?, ?, ?, ?, ?)",
                  (payload, reason, attempt, config_hash, batch_id, self.clock()))
        self._delete(c, table, batch_id if row_id is None else row_id)

    def _bury_batch(self, c: Any, batch_id: int, payload: bytes, reason: str, attempt: int,
                    config_hash: str) -> None:
        """Every post of an input batch to dead letters (the payload itself if it cannot be
        decoded), and the batch removed."""
        try:
            posts = codec.loads_posts(payload).to_pylist()
        except codec.PayloadError as exc:
            self._dead_letter_raw(c, batch_id, payload, f"{reason}; {exc}", attempt,
                                  config_hash)
            return
        self._insert_dead(c, [(p, reason) for p in posts], attempt, config_hash, batch_id)
        self._delete(c, "input", batch_id)

    # -- the ledger's ids ------------------------------------------------------------------
    def _vid(self, c: Any, config_hash: str) -> int:
        """The small id ledger entries carry for a config_hash (made on first use)."""
        t = self.tables["versions"]
        row = c.execute(f"SELECT vid FROM {t} WHERE version = ?", (config_hash,)).fetchone()
        if row is None:
            row = c.execute(f"INSERT INTO {t} (version) VALUES (?) RETURNING vid",
                            (config_hash,)).fetchone()
        if row[0] > MAX_VID:  # ledger entries keep a version id in 15 bits
            raise QueueFileError(f"queue file {self.path}: more than {MAX_VID:,} config "
                                 "versions")
        return row[0]

    def _next_seq(self, c: Any) -> int:
        row = c.execute("INSERT INTO meta(key, value) VALUES ('ledger_seq', '1') "
                        "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1 "
                        "RETURNING value").fetchone()
        return int(row[0])

    def _by_config_hash(self, c: Any, uris: list[tuple[pa.Array | pa.ChunkedArray, str]]
                        ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(version id, keys, checks)``: the fingerprints of uri columns, per config_hash."""
        grouped: dict[str, list[pa.Array | pa.ChunkedArray]] = {}
        for column, config_hash in uris:
            grouped.setdefault(config_hash, []).append(column.cast(pa.string()))
        for config_hash, columns in grouped.items():
            keys, checks = fingerprints(pc.drop_null(pa.chunked_array(columns, pa.string())))
            yield self._vid(c, config_hash), keys, checks

    # -- paging ----------------------------------------------------------------------------
    @staticmethod
    def _pages(c: Any, select: str, params: tuple[Any, ...] = (), size: int = 256
               ) -> Iterator[list[tuple[Any, ...]]]:
        """``select`` (``id`` first; ``params`` for its placeholders) in pages of ``size``
        rows, in id order."""
        last = 0
        where = " AND " if " WHERE " in select else " WHERE "
        while page := c.execute(f"{select}{where}id > ? ORDER BY id LIMIT ?",
                                (*params, last, size)).fetchall():
            yield page
            last = page[-1][0]

    def _batch_uris(self, c: Any) -> Iterator[list[tuple[pa.Array, str]]]:
        """``(uris, config_hash)`` of every queued batch, a page at a time."""
        for page in self._pages(c, f"SELECT id, payload, version FROM {self.tables['input']}"):
            yield [(codec.loads_posts(p).column("uri"), v) for _, p, v in page]

    def _dead_uris(self, c: Any) -> Iterator[list[tuple[pa.Array, str]]]:
        """``(uris, config_hash)`` of the decodable dead letters, a page at a time."""
        for page in self._pages(c, f"SELECT id, uri, version FROM {self.tables['dead']} "
                                   "WHERE uri IS NOT NULL", size=50_000):
            grouped: dict[str, list[str]] = {}
            for _, uri, config_hash in page:
                grouped.setdefault(config_hash, []).append(uri)
            yield [(pa.array(u, pa.string()), v) for v, u in grouped.items()]

    def file_bytes(self) -> int:
        """The queue file and its WAL, on disk."""
        wal = self.path.with_name(self.path.name + "-wal")
        return sum(p.stat().st_size for p in (self.path, wal) if p.exists())
