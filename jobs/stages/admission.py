"""Admission of the runs of one command: which integrations' runs start together, and how far
each pool may grow, so that every run side by side keeps room for its minimum actor pool and
a read task (the rest start as earlier ones end); each run is waited on by a thread of its
own (``Background``), so each winds down on its own.
"""
from __future__ import annotations

import sys
import threading
from typing import Any, Callable, Protocol, Sequence

from jobs.config import BackfillConfig
from jobs.stages.errors import RunStopped


class Run(Protocol):
    """What admission needs of a run (``inference.InferenceRun``)."""

    name: str

    def start(self, feeding: bool, quiet: bool) -> None: ...
    def feed_ended(self) -> None: ...
    def wait(self) -> Any: ...
    def stop(self, reason: RunStopped) -> None: ...
    def close(self) -> None: ...


def pool_caps(ray: Any, config: BackfillConfig, names: Sequence[str]) -> dict[str, int | None]:
    """For integrations run side by side: the most classifier actors each may grow to so that
    every other one keeps room for its minimum pool and a read task (None: no cap)."""
    caps: dict[str, int | None] = {name: None for name in names}
    if len(names) < 2:
        return caps
    have = ray.cluster_resources()
    needs = {name: _min_need(config, name) for name in names}
    for name in names:
        integ = config.integrations[name]
        room = []
        for kind, per_actor in (("CPU", integ.num_cpus), ("GPU", integ.num_gpus)):
            if per_actor > 0:
                free = have.get(kind, 0) - sum(n[kind] for other, n in needs.items()
                                               if other != name) - needs[name][kind]
                room.append(int(free // per_actor + 1e-9))
        if room:
            caps[name] = max(integ.actors.min, min(integ.actors.max,
                                                   integ.actors.min + max(0, min(room))))
    return caps


def _min_need(config: BackfillConfig, name: str) -> dict[str, float]:
    """CPUs and GPUs an integration's run cannot do without: its minimum pool, one read task."""
    integ = config.integrations[name]
    return {"CPU": integ.num_cpus * integ.actors.min + config.pipeline.read_task_num_cpus,
            "GPU": integ.num_gpus * integ.actors.min}


class Together:
    """The runs of one command: started as the cluster holds them, each waited on by its own
    thread (so each winds down on its own), their outcomes collected in the caller's thread."""

    def __init__(self, ray: Any, config: BackfillConfig, runs: list[Run],
                 quiet: bool, on_end: Callable[[str, Any], None]) -> None:
        self.ray, self.config, self.quiet, self.on_end = ray, config, quiet, on_end
        self.pending = list(runs)
        self.active: dict[str, tuple[Run, Background]] = {}
        self.outcomes: dict[str, Any] = {}
        self.feeding: list[Run] = []
        self.told: set[str] = set()

    def admit(self, feeding: bool) -> None:
        """Start each waiting run whose minimum needs fit beside the running ones."""
        have: dict[str, float] | None = None
        for run in list(self.pending):
            if self.active:
                have = have or self.ray.cluster_resources()
                used = [_min_need(self.config, name) for name in self.active]
                need = _min_need(self.config, run.name)
                short = [kind for kind in ("CPU", "GPU") if need[kind] > 0 and need[kind]
                         + sum(u[kind] for u in used) > have.get(kind, 0) + 1e-9]
                if short:
                    if run.name not in self.told and not self.quiet:
                        self.told.add(run.name)
                        print(f"inference {run.name}: waits for {' and '.join(short)}s held by "
                              f"{', '.join(self.active)} (starts when one of them ends)",
                              file=sys.stderr)
                    continue
            self.pending.remove(run)
            try:  # on a terminal, tqdm gives each run's bar a line of its own
                run.start(feeding, self.quiet)
            except Exception as exc:  # noqa: BLE001 - this run's outcome; the others go on
                run.close()
                self.outcomes[run.name] = exc
                self.on_end(run.name, exc)
                continue
            if feeding:
                self.feeding.append(run)
            self.active[run.name] = (run, Background(run.wait))

    def feed_ended(self) -> None:
        for run in self.feeding:
            run.feed_ended()
        self.feeding = []

    def wait(self) -> None:
        """Until every run has ended: collect each that ended, start the next that fits."""
        while self.pending or self.active:
            self.collect()
            self.admit(feeding=False)
            if self.active:
                next(iter(self.active.values()))[1].done.wait(0.2)

    def collect(self) -> None:
        for name, (run, waiting) in list(self.active.items()):
            if waiting.alive():
                continue
            del self.active[name]
            outcome = waiting.error if waiting.error is not None else waiting.result
            run.close()
            self.outcomes[name] = outcome
            self.on_end(name, outcome)

    def stop_all(self, reason: Callable[[], RunStopped], not_started: str) -> None:
        """Stop every run (``reason()``: each run's own stop) and wait for them to wind
        down; a run not started yet, having claimed nothing, ends with ``not_started`` (and
        the reason's exit code)."""
        for run, _ in self.active.values():
            run.stop(reason())
        self.feed_ended()
        for run in self.pending:
            stop = reason()
            self.outcomes[run.name] = RunStopped(not_started, stop.exit_code, prefix=stop.prefix)
            self.on_end(run.name, self.outcomes[run.name])
        self.pending = []
        while self.active:
            try:
                for _, waiting in self.active.values():
                    waiting.done.wait(0.5)
                self.collect()
            except KeyboardInterrupt:  # a second Ctrl-C: they are already winding down
                continue

    def close(self) -> None:
        for run, _ in self.active.values():
            run.close()


class Background:
    """Runs ``fn`` on a daemon thread; ``join`` re-raises what it raised once it has ended.

    Whether it ended is an Event, not ``Thread.is_alive``: a ``Thread.join`` cut short by
    Ctrl-C can leave ``is_alive()`` False for a thread still running (seen on Python 3.11),
    and a run's outcome would then be read before it exists."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.error: BaseException | None = None
        self.result: Any = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to join()
            self.error = exc
        finally:
            self.done.set()

    def alive(self) -> bool:
        return not self.done.is_set()

    def join(self, timeout: float | None = None) -> None:
        if self.done.wait(timeout) and self.error is not None:
            raise self.error
