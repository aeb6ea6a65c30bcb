"""``QueueStore``: one integration's SQLite queue — input batches with leases, output rows,
dead letters — as the verbs of its four parts: the queue core (``lease.py``), export
bookkeeping (``exports.py``), maintenance (``maintenance.py``) and status reads
(``reads.py``), over the open file (``queue_file.py``, where the shared SQL lives).
"""
from __future__ import annotations

from queue_store.maintenance import Maintenance
from queue_store.queue_file import queue_path
from queue_store.reads import StatusReads


class QueueStore(Maintenance, StatusReads):
    """``QueueStore(data_dir, integration, max_attempts=…)`` opens (creating) the queue
    file; ``readonly=True`` opens an existing one for reads only."""


__all__ = ["QueueStore", "queue_path"]
