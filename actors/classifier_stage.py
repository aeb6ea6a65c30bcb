"""The Ray Data ``map_batches`` stage: load the classifier once, label one batch per call.

No exception may escape ``__call__`` (it would abort the whole dataset): posts that fail are
isolated by bisection and come out as failure rows carrying their reason.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from classifiers.poison import classify_isolating
from classifiers.registry import build_classifier
from queue_store import codec

# Columns the writer and the output layout own; a classifier may not overwrite them.
RESERVED = frozenset({"uri", "text", "preprocessing_timestamp", "was_successfully_labeled",
                      "reason", "label_timestamp", "classifier", "model", "run_id"})

RESULT_SCHEMA = pa.schema([("batch_id", pa.int64()), ("lease_id", pa.string()),
                           ("batch_posts", pa.int64()), ("uri", pa.string()),
                           ("ok", pa.bool_()), ("reason", pa.string()),
                           ("columns_json", pa.string()), ("label", pa.string())])


class ClassifierStage:
    def __init__(self, classifier_type: str, params: dict[str, Any], run_id: str) -> None:
        self.classifier = build_classifier(classifier_type, params)
        self.fixed = {**self.classifier.provenance.columns(), "run_id": run_id}

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        try:
            outcomes = classify_isolating(self.classifier, batch.column("text").to_pylist())
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
        except Exception as exc:  # noqa: BLE001 - last line of defence: fail the rows, not the run
            reason = f"stage error: {type(exc).__name__}: {exc}"[:500]
            ok, reasons, cols, labels = [False] * n, [reason] * n, [None] * n, [None] * n
        return pa.table([batch.column("batch_id"), batch.column("lease_id"),
                         batch.column("batch_posts"), batch.column("uri"),
                         pa.array(ok, pa.bool_()), pa.array(reasons, pa.string()),
                         pa.array(cols, pa.string()), pa.array(labels, pa.string())],
                        schema=RESULT_SCHEMA)
