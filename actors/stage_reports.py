"""StageReports: what the classifier stage reports while it works, kept outside its processes.

The crash journal (which posts a classifier process was running when it died, see
``classifiers/crash_isolation.py``), a fatal error (a classifier that cannot be built, a
rejected API key, a label of the wrong type, a disk that cannot be written), hosted-model
usage counters, and what the stage is doing: actors loading their model or ready, posts
classified so far (one report per ``classify`` call, so slow models show progress), and what
a hosted model waits on (a rate limit, a server that does not answer). The QueueActor is one
(one process fewer per run): these methods run in a concurrency group of their own
(``STAGE``), as a classifier announces every block here before running it and must never wait
behind the queue's SQLite work.
"""
from __future__ import annotations

import time

import ray

from actors.stats import Fatal, StageStats
from classifiers.crash_isolation import BlockState, CrashJournal
from classifiers.scrub import scrub


# The concurrency group of the classifier stage's reports: a thread of its own.
STAGE = "stage"
OPTIONS = {"concurrency_groups": {STAGE: 1}}  # ray.remote(**OPTIONS) of the actor class
reports = ray.method(concurrency_group=STAGE)


class StageReports:
    """The classifier stage's reports; every method runs only on the ``STAGE`` thread."""

    def __init__(self) -> None:
        self.journal = CrashJournal()
        self.fatal: Fatal | None = None
        self.usage: dict[str, int] = {}
        self.stage_cpu: dict[str, tuple[int, float]] = {}
        self.actors: dict[str, str] = {}  # actor -> "loading" | "ready"
        self.waiting: dict[str, dict[str, str]] = {}  # actor -> its classifier's status()
        self.read_cpu_s = 0.0

    @reports
    def journal_begin(self, key: str, n_posts: int) -> BlockState | None:
        return self.journal.begin(key, n_posts)

    @reports
    def journal_set_active(self, key: str, posts: list[int]) -> None:
        self.journal.set_active(key, posts)

    @reports
    def report_fatal(self, message: str, exit_code: int = 2) -> None:
        """The first fatal error wins (later ones are its consequences)."""
        if self.fatal is None:
            self.fatal = Fatal(message=scrub(message)[:1000], exit_code=exit_code)

    @reports
    def add_usage(self, counts: dict[str, int]) -> None:
        for key, value in counts.items():
            self.usage[key] = self.usage.get(key, 0) + int(value)

    @reports
    def report_actor(self, actor: str, state: str) -> None:
        self.actors[actor] = state

    @reports
    def report_call(self, actor: str, ended: str | None, posts: int,
                    outside_classify_s: float) -> None:
        """A classifier actor's ``classify`` call is over: the journal's ``end`` of its block
        part (``ended``; None if the call never got there), and the actor's running totals:
        posts, and process CPU seconds spent outside ``classify`` since its model was loaded.
        One message for both: every call costs this actor about 0.5 ms of CPU."""
        if ended is not None:
            self.journal.end(ended)
        self.stage_cpu[actor] = (posts, outside_classify_s)

    @reports
    def report_read_task(self, cpu_s: float) -> None:
        """A read task's CPU seconds (its thread: claiming, rows, blocks), as it ends."""
        self.read_cpu_s += cpu_s

    @reports
    def report_waiting(self, actor: str, status: dict[str, str]) -> None:
        self.waiting[actor] = {k: scrub(v)[:300] for k, v in status.items()}

    @reports
    def stage_stats(self) -> StageStats:
        posts = sum(p for p, _ in self.stage_cpu.values())
        cpu = sum(s for _, s in self.stage_cpu.values())
        waiting: dict[str, str] = {}
        for status in self.waiting.values():
            waiting.update(status)
        states = list(self.actors.values())
        return StageStats(fatal=self.fatal, process_deaths=self.journal.deaths,
                          usage=dict(self.usage), classified=posts,
                          stage_us_per_post=round(cpu / posts * 1e6, 2) if posts else None,
                          actors_loading=states.count("loading"),
                          actors_ready=states.count("ready"), waiting_on=waiting,
                          read_tasks_cpu_s=self.read_cpu_s,
                          cpu_s=time.thread_time())  # the thread that serves it
