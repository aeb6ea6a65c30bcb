"""RunGuard: watches a running inference pass from the driver.

A thread polls the QueueActor (and its StageReports) about once a second and keeps the latest
figures (the progress display and a partial summary read them). It decides that the run must
stop — the thread that waits on the pass then raises ``RunStopped`` — when:

- an actor reported a fatal error (classifier not buildable, key rejected, a label of the
  wrong type, a disk that cannot be written): that error, its own exit code;
- nothing was classified and nothing completed for ``no_progress_s`` once a classifier actor
  is up, or for ``STARTUP_LIMIT_S`` (at least) while none is — starting workers and loading a
  model may take minutes (Ray Data's own no-progress guard is off: it cannot tell a slow model
  from a hang, this one counts posts through ``classify``): what the stage was waiting for,
  exit 1;
- the pipeline's actors stopped answering for ``lost_after_s`` (the Ray cluster went away):
  exit 1, with the last figures — unless the Ray is a local one this job started whose own
  processes are alive (a loaded machine, not a lost cluster): then it waits as long as for a
  run that does not move, ``no_progress_s``, and says the machine is overloaded.

It also says what the stage waits for while it does not move: actors starting, the model
loading, a hosted model's rate limit or its last connection error.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

from actors.stats import QueueStats, StageStats, WriterStats
from jobs.stages.errors import RunStopped
from jobs.stages.progress import Figures
from jobs.stages.ray_setup import machine_load

POLL_S = 1.0
STARTUP_LIMIT_S = 900.0


class RunGuard:
    def __init__(self, ray: Any, queue: Any, monitor: Any, writer: Any, no_progress_s: float,
                 where: str, lost_after_s: float, poll_s: float = POLL_S,
                 clock: Callable[[], float] = time.monotonic, budget: int | None = None,
                 local_alive: Callable[[], bool] | None = None) -> None:
        self.ray = ray
        self.queue = queue
        self.monitor = monitor
        self.writer = writer
        self.writer_stats = WriterStats()  # the writer's last answer (exports so far)
        self._writer_ref: Any = None
        self.no_progress_s = no_progress_s
        self.where = where  # the cluster, in words, for the "went away" line
        self.poll_s = poll_s
        self.lost_after_s = lost_after_s
        # A local Ray this job started: are its own processes alive (then it is slow, not gone)?
        self.local_alive = local_alive
        self.clock = clock
        self.queue_stats = QueueStats()
        self.stage_stats = StageStats()
        self.budget = budget  # --max-records-per-run
        self.feeding = False
        self._answered = False
        self.stop_reason: RunStopped | None = None
        self._moved_at = clock()
        self._answered_at = clock()
        self._last_marks: tuple[int, ...] = ()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "RunGuard":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self._thread.join(timeout=15)

    def _loop(self) -> None:
        while not self._halt.wait(self.poll_s):
            self.check()

    def check(self) -> None:
        """One poll: refresh the figures and decide whether the run must stop."""
        try:
            qs, ss = self.ray.get([self.queue.get_stats.remote(),
                                   self.monitor.stage_stats.remote()],
                                  timeout=min(10.0, self.lost_after_s / 2))
        except Exception as exc:  # noqa: BLE001 - an actor or the cluster is gone
            now = self.clock()
            silent = now - self._answered_at
            if silent < self.lost_after_s or self.stop_reason is not None:
                return
            if self.local_alive is not None and self.local_alive():
                if silent >= max(self.no_progress_s, self.lost_after_s):
                    self.stop_reason = RunStopped(
                        f"the local Ray has not answered for {silent:.0f} s although its "
                        f"processes are alive ({type(exc).__name__}; {machine_load()}): the "
                        "machine is overloaded; rerun when it is quieter: nothing is lost or "
                        "duplicated", 1, cluster_lost=True)
                return
            self.stop_reason = RunStopped(
                f"lost contact with the Ray cluster ({self.where}): the run's actors have "
                f"not answered for {silent:.0f} s ({type(exc).__name__}); rerun when the "
                "cluster is back: nothing is lost or duplicated", 1, cluster_lost=True)
            return
        now = self._answered_at = self.clock()
        self.queue_stats, self.stage_stats, self._answered = qs, ss, True
        self._poll_writer()
        if ss.fatal is not None and self.stop_reason is None:
            self.stop_reason = RunStopped(ss.fatal.message, ss.fatal.exit_code)
            return
        # An actor coming up counts as movement: the no-progress clock starts from there.
        marks = (ss.classified, qs.labelled + qs.dead_lettered + qs.failed, ss.actors_ready)
        limit = self.no_progress_s if ss.actors_ready else max(self.no_progress_s,
                                                                STARTUP_LIMIT_S)
        if marks != self._last_marks or self.feeding:
            self._last_marks, self._moved_at = marks, now
        elif now - self._moved_at >= limit and self.stop_reason is None:
            self.stop_reason = RunStopped(
                f"no post was labelled for {now - self._moved_at:.0f} s "
                f"(pipeline.no_progress_timeout_s {self.no_progress_s:g}); the stage was "
                f"{self.waiting() or 'not moving'}; rerun to go on (nothing is lost), or "
                "raise the timeout for a model this slow", 1)

    def _poll_writer(self) -> None:
        """The writer's figures, never waited for (it may be busy exporting): last poll's
        question is read if answered, and the next one asked. A run whose cluster goes away
        then still says what it exported."""
        try:
            if self._writer_ref is not None:
                ready, _ = self.ray.wait([self._writer_ref], timeout=0)
                if not ready:
                    return
                self._writer_ref = None
                self.writer_stats = self.ray.get(ready[0], timeout=1)
            self._writer_ref = self.writer.get_stats.remote()
        except Exception:  # noqa: BLE001 - the writer is gone: keep its last figures
            self._writer_ref = None

    def stop(self, reason: RunStopped) -> None:
        """Stop the run from outside (Ctrl-C, a failed feed) unless it is stopping already."""
        if self.stop_reason is None:
            self.stop_reason = reason

    def waiting(self) -> str | None:
        """What the stage waits for, in words (None while it moves)."""
        ss = self.stage_stats
        stalled = self.clock() - self._moved_at > 2 * self.poll_s
        if self.feeding and not self.queue_stats.remaining_posts:
            return "the enqueue to queue posts"
        if ss.waiting_on.get("rate_limit"):
            return f"a rate limit: {ss.waiting_on['rate_limit']}"
        if ss.actors_ready == 0:
            if ss.actors_loading:
                return f"loading the model ({ss.actors_loading} classifier actor(s))"
            return "starting classifier actors"
        if stalled and ss.waiting_on.get("last_error"):
            return f"the hosted model: {ss.waiting_on['last_error']}"
        return None

    def figures(self) -> Figures:
        """Posts done so far, and the total: done plus what is still queued for this version
        (it grows while the enqueue beside the run queues posts), within the run's budget."""
        qs = self.queue_stats
        done = qs.labelled + qs.dead_lettered
        total = done + qs.remaining_posts if self._answered else None
        if total is not None and self.budget is not None:
            total = min(total, self.budget)
        return Figures(done=done, failed=qs.failed, dead=qs.dead_lettered, total=total,
                       waiting=self.waiting())

    def wait_for(self, thread: Any) -> None:
        """Wait until ``thread`` (a ``Background``) ends, or raise the reason to stop."""
        while thread.alive():
            if self.stop_reason is not None:
                raise self.stop_reason
            thread.join(0.5)
        if self.stop_reason is not None:
            raise self.stop_reason
        thread.join(0)
