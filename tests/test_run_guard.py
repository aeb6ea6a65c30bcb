"""The RunGuard's decisions on a controlled clock: what the progress line says the run waits
for, when it stops for no progress, for a fatal error or for a cluster that went away."""
from __future__ import annotations

from actors.stats import Fatal, QueueStats, StageStats, WriterStats
from jobs.stages.run_guard import STARTUP_LIMIT_S, RunGuard


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Answer:
    def __init__(self, owner: "_Actors", which: str) -> None:
        self.owner, self.which = owner, which

    def remote(self) -> str:
        return self.which


class _Actors:
    """Plays the QueueActor (its queue and stage figures) and ``ray.get`` over them."""

    def __init__(self) -> None:
        self.queue_stats, self.stage_answer, self.down = QueueStats(), StageStats(), False
        self.writer_answer = WriterStats()
        self.get_stats = _Answer(self, "stats")
        self.stage_stats = _Answer(self, "stage")

    def get(self, refs, timeout: float):
        if self.down:
            raise ConnectionError("the cluster is gone")
        if refs == "stats":  # the writer's (it plays every actor's get_stats)
            return self.writer_answer
        return [self.queue_stats, self.stage_answer]

    def wait(self, refs: list, timeout: float) -> tuple[list, list]:
        if self.down:
            raise ConnectionError("the cluster is gone")
        return refs, []


def _guard(no_progress_s: float = 60, lost_after_s: float = 30, local_alive=None):
    actors, clock = _Actors(), _Clock()
    guard = RunGuard(actors, actors, actors, actors, no_progress_s, "the cluster at 10.0.0.1:6379",
                     lost_after_s=lost_after_s, clock=clock, local_alive=local_alive)
    return guard, actors, clock


def test_the_progress_line_says_what_the_run_waits_for():
    guard, actors, clock = _guard()
    guard.feeding = True
    guard.check()
    assert "enqueue" in guard.figures().waiting
    guard.feeding = False
    guard.check()
    assert guard.figures().waiting == "starting classifier actors"
    actors.stage_answer = StageStats(actors_loading=1)
    guard.check()
    assert guard.figures().waiting == "loading the model (1 classifier actor(s))"
    actors.stage_answer = StageStats(actors_ready=1, classified=50)
    guard.check()
    assert guard.figures().waiting is None  # it moves
    actors.stage_answer = StageStats(actors_ready=1, classified=50, waiting_on={
        "last_error": "chat completion: connection error (ClientConnectorError)"})
    clock.now += 5  # and then it does not
    guard.check()
    assert "the hosted model: chat completion: connection error" in guard.figures().waiting
    actors.stage_answer = StageStats(actors_ready=1, classified=50, waiting_on={
        "rate_limit": "the server asked to wait 30 s (HTTP 429); waiting 12 s more"})
    guard.check()
    assert guard.figures().waiting.startswith("a rate limit: the server asked to wait 30 s")
    assert guard.stop_reason is None


def test_no_progress_stops_the_run_saying_what_it_waited_for():
    guard, actors, clock = _guard(no_progress_s=60)
    guard.check()
    clock.now += 120  # no actor yet: start-up may take minutes
    guard.check()
    assert guard.stop_reason is None
    clock.now += STARTUP_LIMIT_S
    guard.check()
    assert "no post was labelled" in str(guard.stop_reason)
    assert "starting classifier actors" in str(guard.stop_reason)

    guard, actors, clock = _guard(no_progress_s=60)
    actors.stage_answer = StageStats(actors_ready=1, classified=10)
    guard.check()
    clock.now += 59
    guard.check()
    assert guard.stop_reason is None
    actors.stage_answer = StageStats(actors_ready=1, classified=11)  # one more post: moving
    clock.now += 59
    guard.check()
    assert guard.stop_reason is None
    clock.now += 61
    guard.check()
    assert guard.stop_reason.exit_code == 1 and "for 61 s" in str(guard.stop_reason)


def test_a_fatal_error_stops_the_run_with_its_own_line_and_exit_code():
    guard, actors, _ = _guard()
    actors.stage_answer = StageStats(fatal=Fatal(message="the key was refused", exit_code=2))
    guard.check()
    assert str(guard.stop_reason) == "the key was refused" and guard.stop_reason.exit_code == 2


def test_a_cluster_that_stops_answering_stops_the_run_after_the_limit():
    guard, actors, clock = _guard(lost_after_s=30)
    actors.queue_stats = QueueStats(labelled=500)
    actors.writer_answer = WriterStats(exported_rows=400, parquet_files=2)
    guard.check()
    guard.check()  # the writer's answer to the first poll is read at the second
    actors.down = True
    clock.now += 29
    guard.check()
    assert guard.stop_reason is None and guard.figures().done == 500  # last figures kept
    clock.now += 2
    guard.check()
    assert "lost contact with the Ray cluster (the cluster at 10.0.0.1:6379)" in str(
        guard.stop_reason)
    # what the run's summary (and the combined table) takes when the actors cannot answer
    assert guard.queue_stats.labelled == 500 and guard.writer_stats.exported_rows == 400


def test_a_local_ray_whose_processes_live_is_slow_not_lost():
    """The job's own local Ray on a loaded machine: actors that do not answer for the lost
    limit do not stop the run while its GCS and raylet are alive; past the no-progress limit
    the run stops saying the machine is overloaded; once they are gone, it is lost."""
    alive = [True]
    guard, actors, clock = _guard(no_progress_s=120, lost_after_s=30,
                                  local_alive=lambda: alive[0])
    guard.check()
    actors.down = True
    clock.now += 100
    guard.check()
    assert guard.stop_reason is None  # slow: 100 s without an answer, processes alive
    actors.down = False
    actors.stage_answer = StageStats(actors_ready=1, classified=5)
    guard.check()  # it answered again: the run goes on
    actors.down = True
    clock.now += 121
    guard.check()
    assert "has not answered for 121 s although its processes are alive" in str(
        guard.stop_reason) and "overloaded" in str(guard.stop_reason)
    assert "load average" in str(guard.stop_reason) and guard.stop_reason.exit_code == 1
    guard, actors, clock = _guard(no_progress_s=120, lost_after_s=30,
                                  local_alive=lambda: alive[0])
    guard.check()
    actors.down, alive[0] = True, False  # its processes are gone too
    clock.now += 31
    guard.check()
    assert "lost contact with the Ray cluster" in str(guard.stop_reason)
