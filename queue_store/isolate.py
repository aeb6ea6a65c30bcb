"""Find the items a step fails on by halving: one bad post must not fail its batch-mates, one
bad output row must not jam an export."""
from __future__ import annotations

from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def isolate_failures(items: Sequence[T], attempt: Callable[[list[T]], R],
                     catch: tuple[type[BaseException], ...] = (Exception,),
                     passthrough: tuple[type[BaseException], ...] = ()
                     ) -> tuple[list[tuple[list[T], R]], list[tuple[T, BaseException]]]:
    """Run ``attempt`` on every item at once; where it raises one of ``catch``, run each half
    on its own, until the items that fail alone are found. Returns ``(group, result)`` for the
    groups that succeeded (in item order) and ``(item, exception)`` for each item that failed
    alone. ``passthrough`` exceptions (nothing can succeed) are raised at once."""
    done: list[tuple[list[T], R]] = []
    failed: list[tuple[T, BaseException]] = []

    def run(group: list[T]) -> None:
        try:
            done.append((group, attempt(group)))
        except passthrough:
            raise
        except catch as exc:
            if len(group) == 1:
                failed.append((group[0], exc))
                return
            mid = len(group) // 2
            run(group[:mid])
            run(group[mid:])

    if items:
        run(list(items))
    return done, failed
