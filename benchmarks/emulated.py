"""An emulated accelerator for benchmarks: a classifier that only waits, as a GPU does from the
host's point of view (the host sends a batch and waits; no host CPU is spent on the model).

Each call sleeps ``len(texts) / posts_per_s`` seconds, so one classifier actor labels at most
``posts_per_s`` posts a second; what the pipeline delivers below ``actors × posts_per_s`` is
its own cost. Used as ``type: benchmarks.emulated:EmulatedAccelerator``.
"""
from __future__ import annotations

import time
from typing import Any

from classifiers.params import RUNTIME, ClassifierParams, param
from classifiers.protocol import Provenance


class EmulatedParams(ClassifierParams):
    posts_per_s: float = param(10_000.0, "posts a second one emulated accelerator labels",
                               RUNTIME, gt=0)


class EmulatedAccelerator:
    Params = EmulatedParams

    def __init__(self, params: EmulatedParams) -> None:
        self.seconds_per_post = 1.0 / params.posts_per_s
        self.provenance = Provenance(classifier="emulated_accelerator", model="sleep")

    def classify(self, texts: list[str]) -> list[dict[str, Any]]:
        time.sleep(len(texts) * self.seconds_per_post)
        return [{"label": "emulated"} for _ in texts]
