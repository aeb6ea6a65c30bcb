"""One integration's SQLite queue: input batches with leases, output rows, dead letters.

Verbs (message-queue style; every write is one ``BEGIN IMMEDIATE`` transaction):

- ``enqueue(posts, metadata=None, batch_size=1000, dedupe=True, version="", relabel=False)``
  — validate; queue the posts whose uri the integration has not seen for this version.
- ``claim(max_batches=1, lease_seconds=60, owner="", version="")`` — lease pending rows of one
  version (reaps first).
- ``extend(leases, lease_seconds=60)`` — heartbeat: push the expiry of leases still held.
- ``complete(batch_id, lease_id, successes, failures)`` — fenced ack: output, retries, delete.
- ``complete_rows(batch_id, lease_id, labelled, failed)`` — the same, output rows already typed.
- ``fail(batch_id, lease_id, reason)`` — fenced nack: batch back to pending (dead at max).
- ``release(batch_id, lease_id)`` — fenced undo of a claim: pending again, attempt not spent.
- ``reap()`` — expired leases, and leases of provably dead holders, back to pending (or dead
  at max_attempts).
- ``requeue_dead(batch_size=1000)``, ``dead_letters(limit=20)``, ``status()``, ``known_uris()``.
"""
from __future__ import annotations

import sqlite3
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence


from queue_store import codec
from queue_store.admin import AdminVerbs
from queue_store.completing import CompleteVerbs
from queue_store.enqueueing import EnqueueVerbs
from queue_store.export_bookkeeping import ExportBookkeeping
from queue_store.lease_holder import LeaseHolder
from queue_store.models import ClaimedBatch, ReapResult
from queue_store.schema import (BUSY_TIMEOUT_MS, QueueFileError, connect, file_identity,
                                storage_error, table_names)

DEFAULT_MAX_ATTEMPTS = 3


def queue_path(data_dir: str | Path, integration: str) -> Path:
    return Path(data_dir) / "queue" / f"{integration}.db"


class QueueStore(CompleteVerbs, EnqueueVerbs, AdminVerbs, ExportBookkeeping):
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

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        """One ``BEGIN IMMEDIATE`` transaction. A full disk or a failing one is reported as
        itself (SQLite has already rolled back then; the ROLLBACK is not the news)."""
        try:
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
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise
            raise storage_error(self.path, exc) from None
        except sqlite3.DatabaseError as exc:
            raise storage_error(self.path, exc) from None

    # -- consumers -------------------------------------------------------------------------
    def claim(self, max_batches: int = 1, lease_seconds: float = 60, owner: str = "",
              decode: bool = True, version: str = "") -> list[ClaimedBatch]:
        """Lease up to ``max_batches`` pending rows queued for ``version`` (a run labels only
        what was queued for its config_hash); undecodable rows go to dead letters.

        ``decode=False`` hands out the stored payload and ``n_posts`` undecoded (``posts`` is
        empty): the pipeline decodes in its read tasks, off the serial queue actor, and buries
        a row it cannot decode with ``bury_undecodable``.
        """
        now = self.clock()
        lease_id = uuid.uuid4().hex
        claimed: list[ClaimedBatch] = []
        t = self.tables["input"]
        with self._tx() as c:
            self._reap(c, now)
            rows = c.execute(
                f"UPDATE {t} SET status = 'processing', lease_id = ?, lease_owner = ?, "
                "lease_expires = ?, attempt = attempt + 1 "
                f"WHERE id IN (SELECT id FROM {t} WHERE status = 'pending' AND version = ? "
                "ORDER BY id LIMIT ?) RETURNING id, payload, metadata, attempt, n_posts",
                (lease_id, owner, now + lease_seconds, version, max_batches)).fetchall()
            for batch_id, payload, metadata, attempt, n_posts in sorted(rows):
                if not decode:
                    claimed.append(ClaimedBatch.model_construct(
                        batch_id=batch_id, lease_id=lease_id, attempt=attempt, posts=[],
                        metadata={}, payload=payload, n_posts=n_posts))
                    continue
                try:
                    posts = codec.loads_posts(payload)
                    meta = codec.loads(metadata)
                    if not isinstance(meta, dict):
                        raise codec.PayloadError("metadata is not a JSON object")
                except codec.PayloadError as exc:
                    self._dead_letter_raw(c, batch_id, payload, str(exc), attempt, version)
                    continue
                # Shapes were checked while decoding: skip pydantic's per-post re-validation.
                claimed.append(ClaimedBatch.model_construct(
                    batch_id=batch_id, lease_id=lease_id, attempt=attempt, posts=posts,
                    metadata=meta, payload=payload, n_posts=len(posts)))
        return claimed

    def has_pending(self, version: str = "") -> bool:
        """Is any batch of ``version`` waiting to be claimed? (one index probe)"""
        return self.conn.execute(f"SELECT 1 FROM {self.tables['input']} WHERE status = "
                                 "'pending' AND version = ? LIMIT 1", (version,)
                                 ).fetchone() is not None

    def bury_undecodable(self, batch_id: int, lease_id: str, reason: str) -> bool:
        """Fenced: a claimed row whose payload cannot be decoded goes to dead letters."""
        t = self.tables["input"]
        with self._tx() as c:
            row = c.execute(f"SELECT payload, attempt, version FROM {t} WHERE id = ? AND "
                            "lease_id = ? AND status = 'processing'",
                            (batch_id, lease_id)).fetchone()
            if row is None:
                return False
            self._dead_letter_raw(c, batch_id, row[0], reason, row[1], row[2])
        return True

    def extend(self, leases: Sequence[tuple[int, str]], lease_seconds: float = 60) -> int:
        """Push the expiry of each (batch_id, lease_id) still held; returns how many were."""
        if not leases:
            return 0
        expires = self.clock() + lease_seconds
        with self._tx() as c:
            before = c.total_changes
            c.executemany(f"UPDATE {self.tables['input']} SET lease_expires = ? "
                          "WHERE id = ? AND lease_id = ? AND status = 'processing'",
                          [(expires, b, lease) for b, lease in leases])
            return c.total_changes - before

    def fail(self, batch_id: int, lease_id: str, reason: str) -> bool:
        """Fenced nack of a whole batch: back to pending, or dead once max_attempts is used."""
        with self._tx() as c:
            held = self._held(c, batch_id, lease_id)
            if held is None:
                return False
            posts, attempt, version = held
            if attempt >= self.max_attempts:
                self._bury_posts(c, batch_id, [(p, reason) for p in posts], attempt, version)
                c.execute(f"DELETE FROM {self.tables['input']} WHERE id = ?", (batch_id,))
            else:
                self._back_to_pending(c, batch_id)
        return True

    def release(self, batch_id: int, lease_id: str) -> bool:
        """Fenced undo of a claim that was never worked on: pending again, attempt not spent."""
        with self._tx() as c:
            return c.execute(
                f"UPDATE {self.tables['input']} SET status = 'pending', lease_id = NULL, "
                "lease_owner = NULL, lease_expires = NULL, attempt = attempt - 1 "
                "WHERE id = ? AND lease_id = ? AND status = 'processing'",
                (batch_id, lease_id)).rowcount == 1

    def reap(self) -> ReapResult:
        """Return expired leases to pending (or dead letters once max_attempts is used)."""
        with self._tx() as c:
            return self._reap(c, self.clock())

    # -- internals -------------------------------------------------------------------------
    def _held(self, c: Any, batch_id: int, lease_id: str
              ) -> tuple[list[dict], int, str] | None:
        row = c.execute(f"SELECT payload, attempt, version FROM {self.tables['input']} "
                        "WHERE id = ? AND lease_id = ? AND status = 'processing'",
                        (batch_id, lease_id)).fetchone()
        if row is None:
            return None
        return codec.loads_posts(row[0]), row[1], row[2]

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
            reason = f"lease expired on attempt {attempt} (worker lost each time)"
            try:
                posts = codec.loads_posts(payload)
            except codec.PayloadError as exc:
                self._dead_letter_raw(c, batch_id, payload, str(exc), attempt, version)
            else:
                self._bury_posts(c, batch_id, [(p, reason) for p in posts], attempt, version)
                c.execute(f"DELETE FROM {t} WHERE id = ?", (batch_id,))
            result.dead_lettered_batches += 1
        return result

    def _bury_posts(self, c: Any, batch_id: int, failed: list[tuple[dict, str]],
                    attempt: int, version: str) -> None:
        now = self.clock()
        c.executemany(f"INSERT INTO {self.tables['dead']} (uri, payload, decodable, reason, "
                      "attempt, version, source_batch_id, created_at) "
                      "VALUES (?, ?, 1, ?, ?, ?, ?, ?)",
                      [(p["uri"], codec.dumps(p), r, attempt, version, batch_id, now)
                       for p, r in failed])

    def _dead_letter_raw(self, c: Any, batch_id: int, payload: str, reason: str,
                         attempt: int, version: str) -> None:
        c.execute(f"INSERT INTO {self.tables['dead']} (uri, payload, decodable, reason, attempt, "
                  "version, source_batch_id, created_at) VALUES (NULL, ?, 0, ?, ?, ?, ?, ?)",
                  (payload, reason, attempt, version, batch_id, self.clock()))
        c.execute(f"DELETE FROM {self.tables['input']} WHERE id = ?", (batch_id,))

