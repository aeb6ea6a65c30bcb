"""What stopped a pipeline pass, in words: a fatal error an actor reported (a classifier that
cannot be built, a rejected key, a label of the wrong type, a disk that cannot be written),
which of the pipeline's actors died, a queue file that cannot be used, or a classifier actor
that could not be replaced. ``RunStopped`` carries the run's partial summary to the CLI."""
from __future__ import annotations

from typing import Any

from classifiers.scrub import scrub
from queue_store.schema import QueueFileError


class PipelineActorDied(RuntimeError):
    """The queue or writer actor (or every classifier actor) died; says which and why."""


class RunStopped(Exception):
    """A run that ended early: one line for the console, its exit code, and the summary of
    what it did before (printed, and saved, by the CLI)."""

    def __init__(self, message: str, exit_code: int, summary: Any = None,
                 prefix: str = "error", cluster_lost: bool = False) -> None:
        super().__init__(scrub(message))
        self.exit_code = exit_code
        self.summary = summary
        self.prefix = prefix
        self.cluster_lost = cluster_lost  # nothing of the run can be reached any more


def true_cause(ray: Any, exc: BaseException, queue: Any, writer: Any,
               monitor: Any) -> RunStopped | BaseException:
    """What to report instead of ``exc`` (``exc`` itself when nothing better is known)."""
    from ray.exceptions import RayActorError, RayTaskError

    stats = _actor_says(ray, monitor, "stage_stats")
    fatal = getattr(stats, "fatal", None)
    if fatal is not None:
        return RunStopped(fatal.message, fatal.exit_code)
    cause = exc.cause if isinstance(exc, RayTaskError) else exc
    if isinstance(cause, QueueFileError):
        return RunStopped(str(cause), 2)
    if isinstance(cause, OSError) and cause.errno:
        return RunStopped(f"{cause.strerror or cause} (errno {cause.errno})", 1)
    dead = _which_died(ray, {"QueueActor (claims, leases and the crash journal)": queue,
                             "WriterActor (completions and parquet)": writer}, exc)
    if dead:
        return PipelineActorDied(dead)
    if isinstance(exc, RayActorError):
        return PipelineActorDied(f"a classifier actor died and could not be replaced: "
                                 f"{_cause(exc)}")
    return exc


def _actor_says(ray: Any, actor: Any, method: str, timeout: float = 10) -> Any:
    """The actor's answer, or the exception that shows it is gone."""
    try:
        return ray.get(getattr(actor, method).remote(), timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - an answer either way
        return exc


def _cause(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    found = next((line.strip() for line in lines if "cause" in line.lower()
                  or "died" in line.lower()), lines[0] if lines else type(exc).__name__)
    return found[:300]


def _which_died(ray: Any, actors: dict[str, Any], exc: BaseException) -> str | None:
    """Which of the pipeline's own actors is gone (they answer get_stats while alive)."""
    for label, actor in actors.items():
        if isinstance(_actor_says(ray, actor, "get_stats"), BaseException):
            return f"the {label} died: {_cause(exc)}"
    return None
