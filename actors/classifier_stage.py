"""The Ray Data ``map_batches`` stage: load the classifier once, label one batch per call.

No exception may escape ``__call__`` (it would abort the whole dataset): posts that fail are
isolated by bisection and come out as failure rows carrying their reason; posts that kill the
process are found through the StageMonitor's journal (``classifiers/crash_isolation.py``).
A classifier that cannot be built at all is reported to the StageMonitor, so the driver stops
the run with the original error instead of a generic actor death.
"""
from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from classifiers.crash_isolation import BlockState, CrashJournal, classify_guarded
from classifiers.protocol import FatalClassifierError
from classifiers.registry import build_classifier
from queue_store.typed_rows import POST_FIELDS, typed_columns

# Columns the writer and the output layout own; a classifier may not overwrite them.
CONTROL = ("batch_id", "lease_id", "batch_posts")  # which claim a result row answers
RESERVED = frozenset({*CONTROL, *POST_FIELDS, "was_successfully_labeled", "reason",
                      "label_timestamp", "classifier", "model", "run_id", "config_hash",
                      "partition_date"})


class MonitorJournal:
    """The crash journal kept by the StageMonitor: begin/set_active are awaited (they must
    be recorded before the posts run), end is not."""

    def __init__(self, monitor: Any) -> None:
        self.monitor = monitor

    def begin(self, key: str, n_posts: int) -> BlockState | None:
        import ray

        return ray.get(self.monitor.journal_begin.remote(key, n_posts))

    def set_active(self, key: str, posts: list[int]) -> None:
        import ray

        ray.get(self.monitor.journal_set_active.remote(key, posts))

    def end(self, key: str) -> None:
        self.monitor.journal_end.remote(key)


def block_key(batch: pa.Table) -> str:
    """Names a block across retries of the same task (leases make it unique per claim)."""
    uri = batch.column("uri")
    return (f"{batch.column('batch_id')[0]}:{batch.column('lease_id')[0]}:"
            f"{uri[0]}:{uri[-1]}:{batch.num_rows}")


class TimedClassifier:
    """The classifier, with the process CPU time its ``classify`` calls take summed up (to
    tell the stage's own per-post cost apart from the model's)."""

    def __init__(self, classifier: Any) -> None:
        self.inner = classifier
        self.cpu_s = 0.0

    def classify(self, texts: list[str]) -> Any:
        start = time.process_time()
        try:
            return self.inner.classify(texts)
        finally:
            self.cpu_s += time.process_time() - start

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class ClassifierStage:
    def __init__(self, classifier_type: str, params: dict[str, Any], run_id: str,
                 monitor: Any = None, config_hash: str = "",
                 secrets: dict[str, str] | None = None, batch_size: int = 256) -> None:
        for name, value in (secrets or {}).items():  # e.g. an API key, never logged
            os.environ.setdefault(name, value)
        self.monitor = monitor
        self.batch_size = batch_size  # Ray Data hands whole blocks: split them here
        try:
            self.classifier = build_classifier(classifier_type, params)
        except Exception as exc:
            self._fatal(f"classifier {classifier_type!r} could not be built: "
                        f"{type(exc).__name__}: {exc}")
            raise
        self.classifier = TimedClassifier(self.classifier)
        self.journal = MonitorJournal(monitor) if monitor is not None else CrashJournal()
        self.actor_key = f"{os.getpid()}-{id(self)}"
        self.posts = 0
        self.cpu_start = time.process_time()  # the model is loaded: count from here
        self.fixed = {**self.classifier.provenance.columns(), "config_hash": config_hash,
                      "run_id": run_id}

    def _fatal(self, message: str) -> None:
        """Tell the driver the true cause before the dataset is aborted."""
        if self.monitor is not None:
            import ray

            ray.get(self.monitor.report_fatal.remote(message[:1000]))

    def _report_usage(self) -> None:
        usage = getattr(self.classifier, "usage", None)
        if self.monitor is not None and callable(usage):
            counts = usage()
            if counts:
                self.monitor.add_usage.remote(counts)  # not awaited: counters only

    def __call__(self, batch: pa.Table) -> pa.Table:
        """One result row per post: the claim it answers, the post's fields, whether it was
        labelled (else ``reason``), and the classifier's outputs as typed Arrow columns."""
        n = batch.num_rows
        names: list[str] = []
        arrays: list[pa.Array] = []
        try:
            try:
                texts = batch.column("text").to_pylist()
                outcomes = []
                for start in range(0, n, self.batch_size):  # classify calls of batch_size
                    part = batch.slice(start, self.batch_size)
                    outcomes += classify_guarded(self.classifier,
                                                 texts[start:start + self.batch_size],
                                                 block_key(part), self.journal)
            finally:
                self._report_usage()
            labels = [out.labels for out in outcomes]  # None where the post failed
            reasons = [out.reason for out in outcomes]  # None where it was labelled
            names, arrays, misfits = typed_columns(labels)
            if RESERVED.intersection(names):  # rare: fail the posts that use one
                for i, row in enumerate(labels):
                    clash = RESERVED.intersection(row) if row else None
                    if clash:
                        misfits[i] = f"classifier output uses reserved column(s) {sorted(clash)}"
                names, arrays, more = typed_columns([None if i in misfits else row
                                                     for i, row in enumerate(labels)])
                misfits.update(more)
            for i, why in misfits.items():
                reasons[i] = why
        except FatalClassifierError as exc:  # fail no post: stop the run, claims handed back
            self._fatal(str(exc))
            raise
        except Exception as exc:  # noqa: BLE001 - last line of defence: fail the rows, not the run
            reasons = [f"stage error: {type(exc).__name__}: {exc}"[:500]] * n
            names, arrays = [], []
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        why = pa.array(reasons, pa.string())
        columns = {name: batch.column(name) for name in (*CONTROL, *POST_FIELDS)}
        columns["was_successfully_labeled"] = pc.is_null(why)
        columns["reason"] = why
        columns["label_timestamp"] = pa.array([stamp] * n, pa.string())
        columns.update(zip(names, arrays))
        for name, value in self.fixed.items():
            columns[name] = pa.array([value] * n, pa.string())
        table = pa.table(columns)
        self.posts += n
        if self.monitor is not None:  # not awaited: figures only
            outside = time.process_time() - self.cpu_start - self.classifier.cpu_s
            self.monitor.report_stage_cpu.remote(self.actor_key, self.posts, outside)
        return table
