"""Status reads of a queue file (no transaction of their own: one statement, one snapshot).

- ``status(config_hash=None)`` — batches and posts per state, dead letters, output rows;
- ``has_pending(config_hash)``, ``remaining_posts(config_hash)``, ``pending_versions()``;
- ``dead_letters(limit)``, ``dead_reasons(limit, config_hash=None)``; ``flag(name)``.
"""
from __future__ import annotations

from queue_store.models import DeadLetter, QueueStatus
from queue_store.queue_file import QueueFile


class StatusReads(QueueFile):
    def flag(self, name: str) -> bool:
        return self.conn.execute("SELECT 1 FROM meta WHERE key = ?", (f"flag:{name}",)
                                 ).fetchone() is not None

    def has_pending(self, config_hash: str) -> bool:
        """Is any batch of ``config_hash`` waiting to be claimed? (one index probe)"""
        return self.conn.execute(f"SELECT 1 FROM {self.tables['input']} WHERE status = "
                                 "'pending' AND version = ? LIMIT 1", (config_hash,)
                                 ).fetchone() is not None

    def status(self, config_hash: str | None = None) -> QueueStatus:
        """Batches and posts per state, dead letters, output rows exported/unexported — of
        every config_hash, or of one (``pending_other_versions`` counts the rest)."""
        t = self.tables
        st = QueueStatus(integration=self.integration)
        mine, args = ("version = ?", (config_hash,)) if config_hash is not None else ("1", ())
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
        if self.records_files:  # the labelled files completions recorded
            for state, n in self.conn.execute(
                    f"SELECT state, COALESCE(SUM(n_rows), 0) FROM {t['files']} WHERE {mine} "
                    "GROUP BY state", args):
                if state == "published":
                    st.output_rows_exported += n
                else:
                    st.output_rows_unexported += n
        st.file_bytes, st.ledger_bytes = self.file_bytes(), self.ledger.bytes_on_disk()
        return st

    def remaining_posts(self, config_hash: str) -> int:
        """Posts queued for ``config_hash`` and not done yet (pending or leased)."""
        return self.conn.execute(f"SELECT COALESCE(SUM(n_posts), 0) FROM "
                                 f"{self.tables['input']} WHERE version = ?",
                                 (config_hash,)).fetchone()[0]

    def pending_versions(self) -> dict[str, int]:
        """Pending posts per config_hash they were queued for."""
        return dict(self.conn.execute(
            f"SELECT version, SUM(n_posts) FROM {self.tables['input']} WHERE status = "
            "'pending' GROUP BY version ORDER BY version").fetchall())

    def dead_letters(self, limit: int) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters with their reasons."""
        rows = self.conn.execute(f"SELECT id, uri, reason, attempt, version FROM "
                                 f"{self.tables['dead']} ORDER BY id LIMIT ?",
                                 (limit,)).fetchall()
        return [DeadLetter(id=i, uri=u, reason=r, attempt=a, config_hash=v)
                for i, u, r, a, v in rows]

    def dead_reasons(self, limit: int, config_hash: str | None = None
                     ) -> list[tuple[str, int]]:
        """The most frequent dead-letter reasons with their counts (of one config_hash, or
        all)."""
        mine, args = ("version = ?", (config_hash,)) if config_hash is not None else ("1", ())
        return [(r, n) for r, n in self.conn.execute(
            f"SELECT reason, COUNT(*) AS n FROM {self.tables['dead']} WHERE {mine} "
            "GROUP BY reason ORDER BY n DESC, reason LIMIT ?", (*args, limit))]
