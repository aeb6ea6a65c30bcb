"""Sample the memory of the driver and every Ray worker process, by role.

Reported as private resident memory (RSS minus shared pages): a Ray worker maps the shared
object store, and every store page it has touched counts in its plain RSS although it belongs
to the store (bounded by ``object_store_memory``), not to the process.
"""
from __future__ import annotations

import os
import threading
import time

import psutil

ROLES = (("QueueActor", "queue_actor"), ("WriterActor", "writer_actor"),
         ("StageReports", "stage_reports"), ("MapWorker", "classifier_actor"),
         ("ReadQueue", "read_task"))


def _role(proc: psutil.Process) -> str | None:
    try:
        title = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    for needle, role in ROLES:
        if f"ray::{needle}" in title:
            return role
    return None


def _private(proc: psutil.Process) -> int:
    mem = proc.memory_info()
    return mem.rss - getattr(mem, "shared", 0)


class Sampler:
    """Calls ``sample()`` every ``interval`` seconds while the ``with`` block runs, on a thread
    of the driver's process: what its samples cost is counted (``cpu_s``) so that a driver
    figure can leave it out (``Sampler.cpu_of_all``)."""

    running: list["Sampler"] = []

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.cpu_s = 0.0  # this sampler's thread so far
        self._stop = threading.Event()

    @classmethod
    def cpu_of_all(cls) -> float:
        """CPU seconds the samplers running now have used so far."""
        return sum(s.cpu_s for s in cls.running)

    def sample(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        start = time.thread_time()
        while not self._stop.wait(self.interval):
            self.sample()
            self.cpu_s = time.thread_time() - start

    def __enter__(self) -> "Sampler":
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        Sampler.running.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        Sampler.running.remove(self)


class RssSampler(Sampler):
    """Peak private RSS per role while the ``with`` block runs (sampled every ``interval`` s)."""

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(interval)
        self.peaks: dict[str, int] = {}
        self._roles: dict[int, str] = {}

    def sample(self) -> None:
        self._bump("driver", _private(psutil.Process(os.getpid())))
        for proc in psutil.process_iter(["pid"]):
            role = self._roles.get(proc.pid) or _role(proc)
            if role is None:
                continue
            self._roles[proc.pid] = role
            try:
                self._bump(role, _private(proc))
            except psutil.NoSuchProcess:
                pass

    def _bump(self, role: str, rss: int) -> None:
        self.peaks[role] = max(self.peaks.get(role, 0), rss)

    def peaks_mb(self) -> dict[str, float]:
        return {role: round(rss / 2 ** 20, 1) for role, rss in sorted(self.peaks.items())}
