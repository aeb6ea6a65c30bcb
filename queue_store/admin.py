"""Admin verbs for people (status, dead letters, requeue) and the enqueue-time dedupe stream."""
from __future__ import annotations

import time
from typing import Any, Iterator

from queue_store import codec
from queue_store.models import DeadLetter, QueueStatus


class AdminVerbs:
    """Mixed into ``QueueStore``; relies on its ``conn``, ``tables`` and ``_tx``."""

    conn: Any
    tables: dict[str, str]
    integration: str

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
        return st

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

    def requeue_dead(self, batch_size: int = 1000) -> int:
        """Move decodable dead posts back to pending with a fresh attempt count, each for the
        version it was queued for."""
        moved = 0
        t = self.tables
        while True:
            with self._tx() as c:  # type: ignore[attr-defined]
                first = c.execute(f"SELECT version FROM {t['dead']} WHERE decodable = 1 "
                                  "ORDER BY id LIMIT 1").fetchone()
                if first is None:
                    return moved
                rows = c.execute(f"SELECT id, payload FROM {t['dead']} WHERE decodable = 1 "
                                 "AND version = ? ORDER BY id LIMIT ?",
                                 (first[0], batch_size)).fetchall()
                posts = [codec.loads(p) for _, p in rows]
                meta = {"requeued_from_dead": True, "batch_size": batch_size,
                        "actual_batch_size": len(posts)}
                c.execute(f"INSERT INTO {t['input']} (payload, metadata, n_posts, version, "
                          "created_at) VALUES (?, ?, ?, ?, ?)",
                          (codec.dumps(posts), codec.dumps(meta), len(posts), first[0],
                           time.time()))
                c.executemany(f"DELETE FROM {t['dead']} WHERE id = ?", [(i,) for i, _ in rows])
                moved += len(rows)

    def known_uris(self) -> Iterator[str]:
        """Stream every uri ever enqueued for this integration (the ledger), in pages."""
        last = ""
        while True:  # keyset pages: no long-lived read transaction, bounded memory
            rows = self.conn.execute(f"SELECT DISTINCT uri FROM {self.tables['ledger']} "
                                     "WHERE uri > ? ORDER BY uri LIMIT 10000",
                                     (last,)).fetchall()
            if not rows:
                return
            for (uri,) in rows:
                yield uri
            last = rows[-1][0]
