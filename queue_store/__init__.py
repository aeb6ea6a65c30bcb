"""The work queue of one integration: a SQLite file of input batches with leases, output rows
and dead letters, and its export to parquet.

Plain Python — no Ray, nothing from ``actors``, ``jobs`` or ``classifiers``: the bottom layer
every other package builds on. ``store`` holds the verbs (``QueueStore``: the queue core in
``lease``, then ``exports``, ``maintenance`` and ``reads``, over ``queue_file``), ``schema``
the file layout, ``ledger`` the enqueue-time dedupe (run files beside the queue file, keyed by
``fingerprint``), ``parquet`` the export, ``rows/`` the shapes and types of what is stored
(posts and their validation, result rows, output column types).
"""
from queue_store.models import (ClaimedBatch, CompactResult, CompleteResult, DeadLetter,
                                EnqueueResult, EnqueueSession, ExportPlan, QueueStatus,
                                ReapResult)
from queue_store.parquet import ExportStats, export_output
from queue_store.schema import NoQueueError, QueueBusyError, QueueFileError
from queue_store.store import QueueStore, queue_path

__all__ = [
    "ClaimedBatch", "CompactResult", "CompleteResult", "DeadLetter", "EnqueueResult",
    "EnqueueSession", "ExportPlan", "ExportStats", "NoQueueError", "QueueBusyError",
    "QueueFileError",
    "QueueStatus", "QueueStore", "ReapResult",
    "export_output", "queue_path",
]
