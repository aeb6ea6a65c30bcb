"""A Ray Data source whose read tasks pull claimed batches from the QueueActor.

Read tasks claim only when Ray Data asks them for the next block, so claims follow what the
classifiers consume (streaming backpressure) instead of leasing the whole queue up front; the
job sets a small ``target_max_block_size`` so a read task hands on what it claimed after a
few batches rather than buffering a 128 MiB block of leases.

A read task stops as soon as nothing is claimable, once it has claimed anything: Ray Data
holds a read task's last partial block until the task ends, so waiting there — for retries, or
for the next chunk of the enqueue streaming beside the run — would hold the very posts (and
their leases) the run waits on. Later *waves* of read tasks claim what comes after (at most
``read_tasks`` run at once, so a wave starts as earlier tasks end): a task that has not yet
claimed holds nothing, so it may wait until something is claimable — a retry, the enqueue's
next committed chunk — or nothing is in flight and nothing more is coming. Retries and
streamed chunks thus run in the same pass, on the same classifier actors, without a new actor
pool or a model reload; the job adds a wave per chunk the enqueue is expected to commit.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from queue_store import ClaimedBatch, codec
from queue_store.rows.shapes import CLAIM_SCHEMA


def batches_to_table(batches: list[ClaimedBatch], queue: Any) -> pa.Table:
    """Claims → one row per post, the claim in its ``CONTROL`` columns. The stored posts are
    an Arrow record batch already (nothing to parse); a batch damaged on disk goes to dead
    letters through one fenced call to ``queue``."""
    import ray

    parts = []
    for claim in batches:
        try:
            posts = codec.loads_posts(claim.payload)
        except codec.PayloadError as exc:
            ray.get(queue.bury_undecodable.remote(claim.batch_id, claim.lease_id, str(exc)))
            continue
        n = posts.num_rows
        parts.append(pa.RecordBatch.from_arrays(
            [*posts.columns, pa.array(np.full(n, claim.batch_id, np.int64)),
             pa.array([claim.lease_id] * n, pa.string()), pa.array(np.full(n, n, np.int64))],
            schema=CLAIM_SCHEMA))
    return pa.Table.from_batches(parts, schema=CLAIM_SCHEMA)


POLL_SECONDS = 0.2


def pull_from_queue(queue: Any, batches_per_claim: int, wait_for_retries: bool = True
                    ) -> Iterator[pa.Table]:
    import ray

    # Before its first claim a task holds nothing, so it may wait: for the enqueue running
    # alongside, or (with later waves to come) for retries of batches in flight, or the end.
    # Without waves (Ray Data batching upstream of a held block) it must not wait for them.
    while (state := ray.get(queue.work_state.remote(wait_for_retries))) == "wait":
        time.sleep(POLL_SECONDS)
    if state == "done":
        return
    while batches := ray.get(queue.next_batches.remote(batches_per_claim)):
        yield batches_to_table(batches, queue)


class QueueDatasource(Datasource):
    def __init__(self, queue: Any, read_tasks: int, batches_per_claim: int,
                 waves: int, wait_for_retries: bool) -> None:
        self.queue = queue
        self.read_tasks = read_tasks
        self.batches_per_claim = batches_per_claim
        self.waves = waves
        # Only later waves can claim a retry (whole-block mapping), so only then may a read
        # task wait for one; the waves added for a streamed enqueue do not change that.
        self.wait_for_retries = wait_for_retries

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        queue, per_claim = self.queue, self.batches_per_claim
        meta = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None)
        pull = functools.partial(pull_from_queue, queue, per_claim, self.wait_for_retries)
        return [ReadTask(pull, meta, schema=CLAIM_SCHEMA)
                for _ in range(self.read_tasks * self.waves)]
