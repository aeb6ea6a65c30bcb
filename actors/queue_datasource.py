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

    decoded = []
    for claim in batches:
        try:
            decoded.append((claim, codec.loads_posts(claim.payload)))
        except codec.PayloadError as exc:
            ray.get(queue.bury_undecodable.remote(claim.batch_id, claim.lease_id, str(exc)))
    claim_posts = {}  # per lease (one per QueueActor call): the posts of its decoded batches
    for claim, posts in decoded:
        claim_posts[claim.lease_id] = claim_posts.get(claim.lease_id, 0) + posts.num_rows
    parts = []
    for claim, posts in decoded:
        n = posts.num_rows
        parts.append(pa.RecordBatch.from_arrays(
            [*posts.columns, pa.array(np.full(n, claim.batch_id, np.int64)),
             pa.array([claim.lease_id] * n, pa.string()), pa.array(np.full(n, n, np.int64)),
             pa.array(np.full(n, claim_posts[claim.lease_id], np.int64))],
            schema=CLAIM_SCHEMA))
    return pa.Table.from_batches(parts, schema=CLAIM_SCHEMA)


POLL_SECONDS = 0.2


def pull_from_queue(queue: Any, block_bytes: int, most_batches: int | None,
                    wait_for_retries: bool = True) -> Iterator[pa.Table]:
    """A read task: claim, turn the claims into rows, yield them; until nothing is claimable.

    Each claim takes as many batches as fill Ray Data's block in one QueueActor call (one
    transaction): Ray Data hands a block on once what was yielded into it exceeds
    ``block_bytes``, so the task claims what is still missing from the block it is filling,
    judged by the bytes its earlier batches took (one batch before it has seen any;
    ``most_batches`` caps a claim). A block holds about the batches it held when each claim
    took one (its leases held as long), for a fraction of the calls."""
    cpu_at_start = time.thread_time()
    try:
        yield from _claims(queue, block_bytes, most_batches, wait_for_retries)
    finally:
        queue.report_read_task.remote(time.thread_time() - cpu_at_start)  # figures only


def _claims(queue: Any, block_bytes: int, most_batches: int | None,
            wait_for_retries: bool) -> Iterator[pa.Table]:
    import ray

    # Before its first claim a task holds nothing, so it may wait: for the enqueue running
    # alongside, or (with later waves to come) for retries of batches in flight, or the end.
    # Without waves (Ray Data batching upstream of a held block) it must not wait for them.
    while (state := ray.get(queue.work_state.remote(wait_for_retries))) == "wait":
        time.sleep(POLL_SECONDS)
    if state == "done":
        return
    claimed_bytes = claimed_batches = 0  # what this task's claims took, as rows
    in_block = 0  # bytes yielded into the block Ray Data is filling
    while True:
        wanted = 1 if not claimed_batches else max(
            1, -(-(block_bytes - in_block + 1) * claimed_batches // claimed_bytes))
        batches = ray.get(queue.next_batches.remote(min(wanted, most_batches or wanted)))
        if not batches:
            return
        table = batches_to_table(batches, queue)
        if table.num_rows:
            claimed_bytes += table.nbytes
            claimed_batches += len(batches)
        in_block += table.nbytes
        if in_block > block_bytes:  # Ray Data hands this block on
            in_block = 0
        yield table


class QueueDatasource(Datasource):
    def __init__(self, queue: Any, read_tasks: int, block_bytes: int,
                 most_batches: int | None, waves: int, wait_for_retries: bool) -> None:
        self.queue = queue
        self.read_tasks = read_tasks
        self.block_bytes = block_bytes  # Ray Data's target block size (the job sets it)
        self.most_batches = most_batches
        self.waves = waves
        # Only later waves can claim a retry (whole-block mapping), so only then may a read
        # task wait for one; the waves added for a streamed enqueue do not change that.
        self.wait_for_retries = wait_for_retries

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        meta = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None)
        pull = functools.partial(pull_from_queue, self.queue, self.block_bytes,
                                 self.most_batches, self.wait_for_retries)
        return [ReadTask(pull, meta, schema=CLAIM_SCHEMA)
                for _ in range(self.read_tasks * self.waves)]
