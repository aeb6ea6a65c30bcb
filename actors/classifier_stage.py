"""The Ray Data ``map_batches`` stage: load the classifier once, label one batch per call.

No exception may escape ``__call__`` (it would abort the whole dataset): posts that fail are
isolated by bisection and come out as failure rows carrying their reason; posts that kill the
process are found through the StageMonitor's journal (``classifiers/crash_isolation.py``).
A classifier that cannot be built at all is reported to the StageMonitor, so the driver stops
the run with the original error instead of a generic actor death.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from classifiers.crash_isolation import BlockState, CrashJournal, classify_guarded
from classifiers.protocol import FatalClassifierError
from classifiers.registry import build_classifier
from queue_store import codec

# Columns the writer and the output layout own; a classifier may not overwrite them.
RESERVED = frozenset({"uri", "text", "preprocessing_timestamp", "was_successfully_labeled",
                      "reason", "label_timestamp", "classifier", "model", "run_id",
                      "config_hash", "partition_date"})

RESULT_SCHEMA = pa.schema([("batch_id", pa.int64()), ("lease_id", pa.string()),
                           ("batch_posts", pa.int64()), ("uri", pa.string()),
                           ("ok", pa.bool_()), ("reason", pa.string()),
                           ("columns_json", pa.string()), ("label", pa.string())])


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


class ClassifierStage:
    def __init__(self, classifier_type: str, params: dict[str, Any], run_id: str,
                 monitor: Any = None, config_hash: str = "",
                 secrets: dict[str, str] | None = None) -> None:
        for name, value in (secrets or {}).items():  # e.g. an API key, never logged
            os.environ.setdefault(name, value)
        self.monitor = monitor
        try:
            self.classifier = build_classifier(classifier_type, params)
        except Exception as exc:
            self._fatal(f"classifier {classifier_type!r} could not be built: "
                        f"{type(exc).__name__}: {exc}")
            raise
        self.journal = MonitorJournal(monitor) if monitor is not None else CrashJournal()
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
        n = batch.num_rows
        try:
            try:
                outcomes = classify_guarded(self.classifier, batch.column("text").to_pylist(),
                                            block_key(batch), self.journal) if n else []
            finally:
                self._report_usage()
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
            ok, reasons, cols, labels = [], [], [], []
            for out in outcomes:
                clash = RESERVED.intersection(out.labels) if out.ok else None
                if clash:
                    out = out._replace(labels=None, reason=f"classifier output uses reserved "
                                                           f"column(s) {sorted(clash)}")
                ok.append(out.ok)
                reasons.append(out.reason)
                label = out.labels.get("label") if out.ok else None
                labels.append(None if label is None else str(label))
                cols.append(codec.dumps({"was_successfully_labeled": True, "reason": None,
                                         "label_timestamp": stamp, **out.labels, **self.fixed})
                            if out.ok else None)
        except FatalClassifierError as exc:  # fail no post: stop the run, claims handed back
            self._fatal(str(exc))
            raise
        except Exception as exc:  # noqa: BLE001 - last line of defence: fail the rows, not the run
            reason = f"stage error: {type(exc).__name__}: {exc}"[:500]
            ok, reasons, cols, labels = [False] * n, [reason] * n, [None] * n, [None] * n
        return pa.table([batch.column("batch_id"), batch.column("lease_id"),
                         batch.column("batch_posts"), batch.column("uri"),
                         pa.array(ok, pa.bool_()), pa.array(reasons, pa.string()),
                         pa.array(cols, pa.string()), pa.array(labels, pa.string())],
                        schema=RESULT_SCHEMA)
