"""What stopped a pipeline pass, in words: the classifier's own fatal error, which of the
pipeline's actors died, or a classifier actor that could not be replaced."""
from __future__ import annotations

from typing import Any

from classifiers.registry import ClassifierConfigError


class PipelineActorDied(RuntimeError):
    """The queue or writer actor (or every classifier actor) died; says which and why."""


def true_cause(ray: Any, exc: Exception, queue: Any, writer: Any, monitor: Any) -> Exception:
    """The exception to raise instead of ``exc`` (``exc`` itself when nothing better is
    known)."""
    from ray.exceptions import RayActorError

    stats = _actor_says(ray, monitor, "get_stats")
    if isinstance(stats, dict) and stats.get("fatal"):
        return ClassifierConfigError(stats["fatal"])
    dead = _which_died(ray, {"QueueActor (claims and leases)": queue,
                             "WriterActor (completions and parquet)": writer,
                             "StageMonitor (crash journal)": monitor}, exc)
    if dead:
        return PipelineActorDied(dead)
    if isinstance(exc, RayActorError):
        return PipelineActorDied(f"a classifier actor died and could not be replaced: "
                                 f"{_cause(exc)}")
    return exc


def _actor_says(ray: Any, actor: Any, method: str) -> Any:
    """The actor's answer, or the exception that shows it is gone."""
    try:
        return ray.get(getattr(actor, method).remote(), timeout=30)
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
