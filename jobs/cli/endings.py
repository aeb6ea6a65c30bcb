"""How a command ends: each stage's summary printed as it ends, then one line per thing left
undone, and the exit code that goes with them."""
from __future__ import annotations

import sys
from typing import TextIO

from jobs.stages.summary import RunSummary

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_DEAD_LETTERED = 3
EXIT_INTERRUPTED = 130


class Summaries:
    """Prints each stage's summary table as soon as it ends, and keeps them."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.done: list[RunSummary] = []

    def __call__(self, summary: RunSummary) -> None:
        self.done.append(summary)
        print(f"\n{summary.stage}: {summary.integration}", file=self.out)
        print(summary.table(), file=self.out, flush=True)


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
