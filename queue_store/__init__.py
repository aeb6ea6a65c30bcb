"""SQLite-backed work queue for backfill inference (plain Python, no Ray)."""
from queue_store.models import (ClaimedBatch, CompleteResult, DeadLetter, EnqueueResult,
                                ExportPlan, QueueStatus, ReapResult)
from queue_store.parquet_export import ExportStats, export_output
from queue_store.store import DEFAULT_MAX_ATTEMPTS, QueueStore, queue_path

__all__ = [
    "ClaimedBatch", "CompleteResult", "DeadLetter", "EnqueueResult", "ExportPlan",
    "ExportStats", "QueueStatus", "QueueStore", "ReapResult", "DEFAULT_MAX_ATTEMPTS",
    "export_output", "queue_path",
]
