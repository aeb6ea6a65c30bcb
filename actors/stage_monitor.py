"""StageMonitor: what the classifier stage reports while it works, kept outside its processes.

The crash journal (which posts a classifier process was running when it died, see
``classifiers/crash_isolation.py``), a fatal error (a classifier that cannot be built, a
rejected API key) and hosted-model usage counters. It is its own small actor, not the
QueueActor: a classifier announces every block here before running it, and must never wait
behind the queue's SQLite work.
"""
from __future__ import annotations

from typing import Any

from classifiers.crash_isolation import BlockState, CrashJournal


class StageMonitor:
    def __init__(self) -> None:
        self.journal = CrashJournal()
        self.fatal: str | None = None
        self.usage: dict[str, int] = {}
        self.stage_cpu: dict[str, tuple[int, float]] = {}

    def journal_begin(self, key: str, n_posts: int) -> BlockState | None:
        return self.journal.begin(key, n_posts)

    def journal_set_active(self, key: str, posts: list[int]) -> None:
        self.journal.set_active(key, posts)

    def journal_end(self, key: str) -> None:
        self.journal.end(key)

    def report_fatal(self, message: str) -> None:
        self.fatal = self.fatal or message

    def add_usage(self, counts: dict[str, int]) -> None:
        for key, value in counts.items():
            self.usage[key] = self.usage.get(key, 0) + int(value)

    def report_stage_cpu(self, actor: str, posts: int, outside_classify_s: float) -> None:
        """A classifier actor's running totals: posts, and process CPU seconds spent outside
        ``classify`` since its model was loaded."""
        self.stage_cpu[actor] = (posts, outside_classify_s)

    def get_stats(self) -> dict[str, Any]:
        posts = sum(p for p, _ in self.stage_cpu.values())
        cpu = sum(s for _, s in self.stage_cpu.values())
        return {"fatal": self.fatal, "process_deaths": self.journal.deaths,
                "usage": dict(self.usage),
                "stage_us_per_post": round(cpu / posts * 1e6, 2) if posts else None}
