"""The in-process twin (``tests/twin.py``) answers as Ray does on what the run relies on: the
same checks run against a real actor and a twinned one."""
from __future__ import annotations

import threading
import time

import pytest

from tests.twin import Twin

GROUP = "side"


class Box:
    """An actor with a busy main thread and a concurrency group of its own."""

    def __init__(self, fail: bool = False) -> None:
        if fail:
            raise ValueError("cannot be built")
        self.seen: list[int] = []
        self.release = threading.Event()

    def add(self, item: int) -> list[int]:
        self.seen.append(item)
        return self.seen

    def held(self, seconds: float) -> str:
        self.release.wait(seconds)
        return "released"

    def mutate(self, values: list[int]) -> list[int]:
        values.append(99)
        return values

    def boom(self) -> None:
        raise KeyError("boom")

    def side(self) -> str:
        return "side"


Box.side = __import__("ray").method(concurrency_group=GROUP)(Box.side)


@pytest.fixture(params=["ray", "twin"])
def remote(request, ray_session, monkeypatch):
    """``ray`` with ``Box`` a real actor, or twinned."""
    if request.param == "twin":
        twin = Twin(also=(Box,))
        twin.install(monkeypatch)
        yield ray_session
        twin.close()
    else:
        yield ray_session


def _box(ray, **kw):
    return ray.remote(concurrency_groups={GROUP: 1})(Box).options(num_cpus=0).remote(**kw)


def test_calls_run_in_order_and_a_group_of_its_own_is_not_held_up(remote):
    ray = remote
    box = _box(ray)
    assert ray.get([box.add.remote(i) for i in range(5)])[-1] == [0, 1, 2, 3, 4]
    held = box.held.remote(30)  # the main thread busy ...
    t0 = time.monotonic()
    assert ray.get(box.side.remote(), timeout=20) == "side"  # ... the group answers
    assert time.monotonic() - t0 < 20
    with pytest.raises(ray.exceptions.GetTimeoutError):
        ray.get(box.add.remote(5), timeout=0.5)  # behind the held call
    ready, pending = ray.wait([held], timeout=0)
    assert (ready, pending) == ([], [held])
    ray.kill(box)


def test_arguments_and_answers_are_copies_and_errors_are_raised_at_get(remote):
    ray = remote
    box = _box(ray)
    mine = [1]
    assert ray.get(box.mutate.remote(mine)) == [1, 99]
    assert mine == [1]
    with pytest.raises(KeyError):
        ray.get(box.boom.remote())
    ray.kill(box)


def test_a_killed_actor_and_one_that_cannot_be_built_answer_as_dead(remote):
    ray = remote
    box = _box(ray)
    ray.get(box.add.remote(1))
    ray.kill(box)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(box.add.remote(2), timeout=60)
    busy = _box(ray)
    busy.held.remote(3)
    queued = busy.add.remote(1)  # waits behind the held call when the actor is killed
    time.sleep(0.5)
    ray.kill(busy)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(queued, timeout=60)
    broken = _box(ray, fail=True)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(broken.add.remote(1), timeout=60)
