"""Find the posts that kill the classifier's process (segfault, OOM kill, ``os._exit``).

An exception is isolated by bisection inside one call (``poison.py``); a post that kills the
process cannot be: the process is gone, and the pipeline restarts the actor and hands it the
same block again. So before working on a block the stage writes down, in a journal that
outlives the process (the StageReports in the QueueActor keep it), which posts it is about to run. When the same
block comes back, the journal says the process died while running those posts: they are
suspects. The block is then run in smaller chunks, each announced before it runs, so every
further death halves the suspects, until a single post is known to kill the process. That
post fails alone ("classifier process died on this post"); every other post is labelled.

No Ray here: ``CrashJournal`` is plain state, ``classify_guarded`` takes any object with the
journal's three verbs.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence

from pydantic import BaseModel, Field

from classifiers.poison import Outcome, classify_isolating

KILLED_REASON = "classifier process died on this post"


class BlockState(BaseModel):
    """What the journal knows about a block that a process died on."""

    active: list[int] = Field(default_factory=list)   # the posts running when it died
    suspects: list[list[int]] = Field(default_factory=list)
    killers: list[int] = Field(default_factory=list)


class Journal(Protocol):
    def begin(self, key: str, n_posts: int) -> BlockState | None: ...
    def set_active(self, key: str, posts: list[int]) -> None: ...
    def end(self, key: str) -> None: ...


class CrashJournal:
    """The journal's state, kept by a process that outlives the classifier's."""

    def __init__(self) -> None:
        self.blocks: dict[str, BlockState] = {}
        self.deaths = 0

    def begin(self, key: str, n_posts: int) -> BlockState | None:
        """Start (or restart) work on a block. None: first time, run it whole. Otherwise the
        process died on this block: the posts that were running become suspects."""
        state = self.blocks.get(key)
        if state is None:
            self.blocks[key] = BlockState(active=list(range(n_posts)))
            return None
        self.deaths += 1
        died_on = state.active
        if len(died_on) == 1:
            state.killers = sorted(set(state.killers) | set(died_on))
            state.suspects = [s for s in state.suspects if s != died_on]
        elif died_on:
            inside = set(died_on)
            state.suspects = [s for s in state.suspects if not inside <= set(s)] + [died_on]
        state.active = []
        return state.model_copy(deep=True)

    def set_active(self, key: str, posts: list[int]) -> None:
        if key in self.blocks:
            self.blocks[key].active = list(posts)

    def end(self, key: str) -> None:
        self.blocks.pop(key, None)


def plan_chunks(n_posts: int, state: BlockState) -> list[list[int]]:
    """The chunks to run after a death: posts under no suspicion together, then each
    suspect group in halves (a group of one is run alone)."""
    killers = set(state.killers)
    suspected = {i for s in state.suspects for i in s}
    clean = [i for i in range(n_posts) if i not in suspected and i not in killers]
    chunks = [clean] if clean else []
    for group in state.suspects:
        group = [i for i in group if i not in killers]
        if len(group) <= 1:
            chunks.extend([group] if group else [])
            continue
        mid = len(group) // 2
        chunks.extend([group[:mid], group[mid:]])
    return chunks


def classify_guarded(classifier: Any, texts: Sequence[str], key: str,
                     journal: Journal) -> list[Outcome]:
    """``classify_isolating`` that also survives posts which kill the process."""
    state = journal.begin(key, len(texts))
    if state is None:
        outcomes = classify_isolating(classifier, texts)
        journal.end(key)
        return outcomes
    result: list[Outcome | None] = [None] * len(texts)
    for i in state.killers:
        result[i] = Outcome(None, KILLED_REASON)
    for chunk in plan_chunks(len(texts), state):
        journal.set_active(key, chunk)  # written before the chunk runs: it may not return
        for i, out in zip(chunk, classify_isolating(classifier, [texts[i] for i in chunk])):
            result[i] = out
    journal.end(key)
    return result  # type: ignore[return-value]
