"""How a command ends: each stage's summary printed as it ends, then one line per thing left
undone, and the exit code that goes with them."""
from __future__ import annotations

import os
import sys
import traceback
from typing import Any, TextIO

from classifiers.scrub import scrub
from jobs.stages.errors import RunStopped
from jobs.stages.summary import RunSummary

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_DEAD_LETTERED = 3
EXIT_NOTHING_SELECTED = 4  # the posts selection (days, window, sample) matched no post
EXIT_INTERRUPTED = 130
EXIT_FAILED = 1
# Several integrations in one command: the command's exit code is the worst of theirs.
SEVERITY = (EXIT_OK, EXIT_NOTHING_SELECTED, EXIT_DEAD_LETTERED, EXIT_INTERRUPTED, EXIT_USAGE,
            EXIT_FAILED)


def worst(*codes: int) -> int:
    """The worst of exit codes, in the order 0 < 4 < 3 < 130 < 2 < 1."""
    return max(codes, key=lambda c: SEVERITY.index(c) if c in SEVERITY else len(SEVERITY))


def summary_of(outcome: Any) -> RunSummary | None:
    """The summary a run's outcome carries: its own, a stop's partial one, or none."""
    summary = outcome.summary if isinstance(outcome, RunStopped) else outcome
    return summary if isinstance(summary, RunSummary) else None


def unexpected(exc: BaseException) -> str:
    """An error nobody planned for, in one line (its traceback too with BACKFILL_DEBUG=1)."""
    if os.environ.get("BACKFILL_DEBUG"):
        traceback.print_exception(exc)
    text = scrub(str(exc).splitlines()[0]) if str(exc) else ""
    return (f"{type(exc).__name__}: {text} (set BACKFILL_DEBUG=1 for the traceback; "
            "rerunning is safe: nothing is lost or duplicated)")


class Summaries:
    """Prints each stage's summary table as soon as it ends, and keeps them."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.done: list[RunSummary] = []

    def __call__(self, summary: RunSummary) -> None:
        self.done.append(summary)
        print(f"\n{summary.stage}: {summary.integration}", file=self.out)
        print(summary.table(), file=self.out, flush=True)

    def combined(self, names: list[str], outcomes: dict[str, object]) -> None:
        """One table for the integrations of a command: a row each, how its run ended."""
        head = ("integration", "enqueued", "labelled", "failed", "dead", "exported",
                "posts/s", "seconds", "result")
        rows = [head]
        for name in names:
            enq = next((s for s in self.done if s.stage == "enqueue" and s.integration == name),
                       None)
            outcome = outcomes[name]
            run = summary_of(outcome)
            if isinstance(outcome, RunStopped):
                result = f"{outcome.prefix} (exit {outcome.exit_code})"
            elif isinstance(outcome, BaseException):
                result = f"error: {type(outcome).__name__} (exit {EXIT_FAILED})"
            else:
                result = "ok" if not (run and run.dead_lettered + run.export_dead_lettered) \
                    else f"dead-lettered (exit {EXIT_DEAD_LETTERED})"
            figures = [enq.enqueued if enq else "-"]
            figures += [getattr(run, f) if run else "-" for f in
                        ("labelled", "failed", "dead_lettered", "exported_rows", "posts_per_s",
                         "duration_s")]
            rows.append((name, *map(str, figures), result))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) if i in (0, len(head) - 1) else c.rjust(w)
                           for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]
        bar = "=" * max(len(line) for line in lines)
        print(f"\nall integrations\n{bar}\n" + "\n".join(lines) + f"\n{bar}", file=self.out,
              flush=True)


def closing_lines(summaries: list[RunSummary], budget: int | None) -> int:
    """One line per thing left undone, and the exit code that goes with it."""
    dead = 0
    for s in summaries:
        if s.stage == "enqueue" and s.skipped_other_version:
            _say(f"{s.integration}: {s.skipped_other_version} post(s) were queued or labelled "
                 f"under another version of this integration's config (this one is config_hash "
                 f"{s.config_hash}); add --relabel-other-versions to label them again (the "
                 "old rows stay, told apart by config_hash)")
        if s.stage != "inference":
            continue
        dead += s.dead_lettered + s.export_dead_lettered
        if s.pending_left and budget:
            _say(f"{s.integration}: {s.pending_left} post(s) still pending "
                 f"(--max-records-per-run {budget}); rerun to continue")
        if s.leased_elsewhere:
            _say(f"{s.integration}: {s.leased_elsewhere} post(s) are leased by another run "
                 f"(live, or on another host); the leases expire in {s.leases_expire_in_s:g} s "
                 "unless that run keeps them, then a rerun takes them")
        if s.pending_other_versions:
            _say(f"{s.integration}: {s.pending_other_versions} post(s) are queued for another "
                 "version of this integration's config (another config_hash), so this run "
                 "left them; label them with that config, or queue them for this one with "
                 "--add-to-queue --relabel-other-versions")
        if s.stopped_claiming and "interrupted" not in s.stopped_claiming:
            _say(f"{s.integration}: {s.stopped_claiming}")
    if dead:
        _say(f"finished, but {dead} post(s) were dead-lettered in this run: see them with "
             "--show-dead N, relabel them with --requeue-dead")
        return EXIT_DEAD_LETTERED
    return EXIT_OK


def _say(line: str) -> None:
    print(line, file=sys.stderr)
