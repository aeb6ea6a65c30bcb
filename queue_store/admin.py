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

    def status(self) -> QueueStatus:
        """Batches and posts per state, dead letters, output rows exported/unexported."""
        t = self.tables
        st = QueueStatus(integration=self.integration)
        for status, batches, posts in self.conn.execute(
                f"SELECT status, COUNT(*), COALESCE(SUM(n_posts), 0) FROM {t['input']} "
                "GROUP BY status"):
            setattr(st, f"{status}_batches", batches)
            setattr(st, f"{status}_posts", posts)
        st.next_lease_expiry = self.conn.execute(
            f"SELECT MIN(lease_expires) FROM {t['input']} WHERE status = 'processing'"
        ).fetchone()[0]
        for decodable, n in self.conn.execute(
                f"SELECT decodable, COUNT(*) FROM {t['dead']} GROUP BY decodable"):
            if decodable:
                st.dead_posts = n
            else:
                st.dead_undecodable_rows = n
        for exported, n in self.conn.execute(
                f"SELECT export_id IS NOT NULL AND export_id IN "
                f"(SELECT id FROM {t['exports']} WHERE state = 'written'), "
                f"COALESCE(SUM(n_rows), 0) FROM {t['output']} GROUP BY 1"):
            if exported:
                st.output_rows_exported = n
            else:
                st.output_rows_unexported = n
        return st

    def dead_letters(self, limit: int = 20) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters with their reasons."""
        rows = self.conn.execute(f"SELECT id, uri, reason, attempt FROM {self.tables['dead']} "
                                 "ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [DeadLetter(id=i, uri=u, reason=r, attempt=a) for i, u, r, a in rows]

    def dead_reasons(self, limit: int = 5) -> list[tuple[str, int]]:
        """The most frequent dead-letter reasons with their counts."""
        return [(r, n) for r, n in self.conn.execute(
            f"SELECT reason, COUNT(*) AS n FROM {self.tables['dead']} GROUP BY reason "
            "ORDER BY n DESC, reason LIMIT ?", (limit,))]

    def requeue_dead(self, batch_size: int = 1000) -> int:
        """Move decodable dead posts back to pending with a fresh attempt count."""
        moved = 0
        t = self.tables
        while True:
            with self._tx() as c:  # type: ignore[attr-defined]
                rows = c.execute(f"SELECT id, payload FROM {t['dead']} WHERE decodable = 1 "
                                 "ORDER BY id LIMIT ?", (batch_size,)).fetchall()
                if not rows:
                    return moved
                posts = [codec.loads(p) for _, p in rows]
                meta = {"requeued_from_dead": True, "batch_size": batch_size,
                        "actual_batch_size": len(posts)}
                c.execute(f"INSERT INTO {t['input']} (payload, metadata, n_posts, created_at) "
                          "VALUES (?, ?, ?, ?)",
                          (codec.dumps(posts), codec.dumps(meta), len(posts), time.time()))
                c.executemany(f"DELETE FROM {t['dead']} WHERE id = ?", [(i,) for i, _ in rows])
                moved += len(rows)

    def known_uris(self) -> Iterator[str]:
        """Stream every uri ever enqueued for this integration (the ledger), in pages."""
        last = ""
        while True:  # keyset pages: no long-lived read transaction, bounded memory
            rows = self.conn.execute(f"SELECT uri FROM {self.tables['ledger']} WHERE uri > ? "
                                     "ORDER BY uri LIMIT 10000", (last,)).fetchall()
            if not rows:
                return
            for (uri,) in rows:
                yield uri
            last = rows[-1][0]
