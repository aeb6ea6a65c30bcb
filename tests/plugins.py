"""Small plugin classifiers used by the tests (loaded by import path, like a user's would be)."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

POISON = "POISON"


class KeywordClassifier:
    """Labels 'intergroup' when the text mentions a group word; raises on the poison marker."""

    def __init__(self, poison_marker: str = POISON, crash_marker_file: str | None = None,
                 delay_s: float = 0.0, kill_marker: str | None = None,
                 fail_init: str | None = None, hold_after_calls: int | None = None,
                 hold_until_file: str | None = None, hold_marker: str | None = None):
        if fail_init:
            raise FileNotFoundError(fail_init)
        self.poison_marker = poison_marker
        self.crash_marker_file = crash_marker_file
        self.delay_s = delay_s
        self.kill_marker = kill_marker
        # After this many calls in a process, each call waits until the file exists: a run
        # that is mid-way (labels written, claims held) for as long as a test needs.
        self.hold_after_calls = hold_after_calls
        self.hold_until_file = hold_until_file
        # Or each call with a text holding this marker waits so (the posts that stay in
        # flight chosen by the test, whatever the blocks' order across actors).
        self.hold_marker = hold_marker
        self.calls = 0

    def classify(self, texts):
        self.calls += 1
        if ((self.hold_after_calls is not None and self.calls > self.hold_after_calls)
                or (self.hold_marker and any(self.hold_marker in t for t in texts))):
            while not Path(self.hold_until_file).exists():
                time.sleep(0.05)
        if self.kill_marker and any(self.kill_marker in t for t in texts):
            os._exit(1)  # like a segfault or an OOM kill: the process is gone
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.crash_marker_file and not Path(self.crash_marker_file).exists():
            Path(self.crash_marker_file).write_text(str(os.getpid()))
            os._exit(1)  # the actor's process dies once, mid-batch
        if any(self.poison_marker in t for t in texts):
            raise ValueError(f"cannot label text containing {self.poison_marker}")
        return [{"label": "intergroup" if "group" in t else "not_intergroup",
                 "prob_intergroup": 0.9 if "group" in t else 0.1} for t in texts]


class WrongLength:
    def classify(self, texts):
        return [{"label": "x"}] * (len(texts) + 1)


class NaNScores:
    def classify(self, texts):
        return [{"prob": math.nan if "nan-me" in t else 0.5} for t in texts]


class OutputsInText:
    """Returns the JSON object written after ``|`` in the post's text as the post's outputs
    (so a test chooses each post's values, types included)."""

    def classify(self, texts):
        import json

        return [json.loads(t.split("|", 1)[1]) for t in texts]


class FlakyOnce:
    """Fails each post whose text holds ``FLAKY`` the first time it sees it (remembered in
    ``state_dir``, so across processes); records each construction (a model load) there."""

    def __init__(self, state_dir: str):
        self.state = Path(state_dir)
        (self.state / f"init-{os.getpid()}-{time.monotonic_ns()}").touch()

    def classify(self, texts):
        import hashlib

        from classifiers.protocol import PostFailure

        out = []
        for t in texts:
            seen = self.state / hashlib.sha1(t.encode()).hexdigest()
            if "FLAKY" in t and not seen.exists():
                seen.touch()
                out.append(PostFailure(reason="flaky the first time"))
            else:
                out.append({"label": "ok"})
        return out
