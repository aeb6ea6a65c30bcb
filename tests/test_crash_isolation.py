"""Posts that kill the classifier's process are found and fail alone (no Ray: the process
death is simulated by an exception that nothing in the stage catches)."""
from __future__ import annotations

import math

import pytest

from classifiers.crash_isolation import KILLED_REASON, CrashJournal, classify_guarded


class ProcessDied(BaseException):
    """Stands in for SIGKILL/OOM: not an Exception, so no per-post isolation catches it."""


class Killer:
    def __init__(self, killers: set[str]):
        self.killers = killers

    def classify(self, texts):
        if any(t in self.killers for t in texts):
            raise ProcessDied()
        if any(t == "raises" for t in texts):
            raise ValueError("ordinary failure")
        return [{"label": len(t)} for t in texts]


def _run_until_done(texts, killers, journal, key="block-1"):
    deaths = 0
    while True:
        try:
            return classify_guarded(Killer(killers), texts, key, journal), deaths
        except ProcessDied:
            deaths += 1  # the actor restarts and gets the same block again
            assert deaths < 100


@pytest.mark.parametrize("n,killer_at", [(256, [77]), (1000, [0]), (7, [6]), (64, [3, 40])])
def test_only_the_killer_posts_fail(n, killer_at):
    texts = [f"post {i}" for i in range(n)]
    texts[n // 2] = "raises"
    killers = {texts[i] for i in killer_at}
    journal = CrashJournal()
    outcomes, deaths = _run_until_done(texts, killers, journal)
    for i, out in enumerate(outcomes):
        if i in killer_at:
            assert out.reason == KILLED_REASON
        elif i == n // 2:
            assert "ordinary failure" in out.reason
        else:
            assert out.ok and out.labels == {"label": len(texts[i])}
    # each killer costs about log2(n) deaths, never one per post
    assert deaths <= len(killer_at) * (math.ceil(math.log2(n)) + 2)
    assert journal.blocks == {}  # finished blocks leave nothing behind


def test_a_block_that_never_died_costs_no_extra_calls():
    journal = CrashJournal()
    outcomes, deaths = _run_until_done([f"p{i}" for i in range(10)], set(), journal)
    assert deaths == 0 and all(o.ok for o in outcomes) and journal.deaths == 0
