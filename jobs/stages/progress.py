"""Live progress for a stage: a bar on a terminal, a plain line every 10 s otherwise.

The figures come from a ``poll()`` callable (the QueueActor's counters during inference, the
enqueue loop's own counts during enqueue), read on a background thread so the stage itself
never waits for the display.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable, TextIO

from pydantic import BaseModel

from classifiers.scrub import scrub

PLAIN_EVERY_S = 10.0
BAR_EVERY_S = 0.5


class Figures(BaseModel):
    done: int = 0
    failed: int = 0
    dead: int = 0
    total: int | None = None     # when it grows while the stage runs
    waiting: str | None = None  # what the stage waits for, when it is not moving


class Progress:
    def __init__(self, label: str, total: int | None, poll: Callable[[], Figures],
                 quiet: bool = False, stream: TextIO | None = None,
                 failed_name: str = "failed", show_dead: bool = True) -> None:
        self.label = label
        self.failed_name = failed_name
        self.show_dead = show_dead
        self.total = total
        self.poll = poll
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._stop = threading.Event()
        self._bar = None
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "Progress":
        if not self.quiet:
            if self.tty:
                from tqdm import tqdm

                self._bar = tqdm(total=self.total, desc=self.label, unit="post",
                                 file=self.stream, dynamic_ncols=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.quiet:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._show(final=True)
        if self._bar is not None:
            self._bar.close()

    def _loop(self) -> None:
        every = BAR_EVERY_S if self.tty else PLAIN_EVERY_S
        while not self._stop.wait(every):
            self._show(final=False)

    def _show(self, final: bool) -> None:
        try:
            fig = self.poll()
        except Exception:  # noqa: BLE001 - a display never fails the stage
            return
        if fig.total is not None:
            self.total = fig.total
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.n = fig.done
            extra: dict[str, object] = {self.failed_name: fig.failed}
            if self.show_dead:
                extra["dead"] = fig.dead
            if fig.waiting and not final:
                extra["waiting"] = scrub(fig.waiting)[:80]
            self._bar.set_postfix(extra, refresh=False)
            self._bar.refresh()
            return
        if final and not fig.done:
            return
        print(self.line(fig if not final else fig.model_copy(update={"waiting": None})),
              file=self.stream, flush=True)

    def line(self, fig: Figures) -> str:
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        rate = fig.done / elapsed
        of = f"/{self.total}" if self.total else ""
        eta = ""
        if self.total and rate > 0 and fig.done < self.total:
            eta = f", ETA {int((self.total - fig.done) / rate)} s"
        dead = f", dead-lettered {fig.dead}" if self.show_dead else ""
        waiting = f"; waiting: {scrub(fig.waiting)}" if fig.waiting else ""
        return (f"[{self.label}] {fig.done}{of} posts, {rate:,.0f} posts/s{eta}, "
                f"{self.failed_name} {fig.failed}{dead}{waiting}")
