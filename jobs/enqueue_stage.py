"""Stage 1: stream posts into an integration's input queue, skipping what is already known.

Posts already in the integration's parquet output and repeats within this run are filtered
here; whether a post is new to the queue is decided by the queue's uri ledger inside the
enqueue transaction, so concurrent enqueues never queue a post twice.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from jobs.config import BackfillConfig
from jobs.known_uris import KnownUris, digests
from jobs.posts_source import PostFiles, iter_posts
from jobs.progress import Figures, Progress
from jobs.summary import RunSummary
from jobs.timing import now_iso, new_run_id
from queue_store import QueueStore


def parquet_uris(root: Path, batch_rows: int = 100_000):
    """Stream the uris already written to the integration's parquet output."""
    if not root.exists():
        return
    for batch in pads.dataset(root, format="parquet", partitioning="hive").to_batches(
            columns=["uri"], batch_size=batch_rows):
        yield from batch.column("uri").to_pylist()


def enqueue_posts(config: BackfillConfig, integration: str, files: PostFiles,
                  quiet: bool = False) -> RunSummary:
    """Enqueue the posts of ``files`` (chosen by ``find_post_files``) for one integration."""
    name, _ = config.resolve_integration(integration)
    summary = RunSummary(run_id=new_run_id(name), integration=name, stage="enqueue",
                         started_at=now_iso())
    t0 = time.monotonic()
    summary.skipped_bad_files = len(files.bad)
    for _, rows, reason in files.rejected:  # readable files without usable columns
        summary.rows_read += rows
        summary.rejected_invalid += rows
        summary.invalid_by_reason[reason] = summary.invalid_by_reason.get(reason, 0) + rows
    store = QueueStore(config.data_dir, name, max_attempts=config.queue.max_attempts)
    try:
        done = KnownUris()
        done.update(parquet_uris(config.output_root / name))
        seen = KnownUris()  # this run's posts: duplicates in the input are skipped too
        carry: list[pa.Table] = []
        carried = 0
        shown = Progress(f"enqueue {name}", files.good_rows, lambda: Figures(
            done=summary.rows_read, failed=summary.rejected_invalid), quiet=quiet,
            failed_name="invalid", show_dead=False)
        with shown:
            for batch in iter_posts(files, config.posts.read_batch_rows):
                carried = _add_batch(store, batch, done, seen, carry, carried, config, summary)
            _flush(store, carry, config.queue.batch_size, summary, final=True)
    finally:
        store.close()
    return summary.finish(config.data_dir, t0, summary.enqueued + summary.rejected_invalid)


def _add_batch(store: QueueStore, batch: pa.RecordBatch, done: KnownUris, seen: KnownUris,
               carry: list[pa.Table], carried: int, config: BackfillConfig,
               summary: RunSummary) -> int:
    """Filter one record batch (done, repeated) and enqueue whole queue rows of it."""
    summary.rows_read += batch.num_rows
    uris = batch.column("uri").to_pylist()
    keys = digests(u or "" for u in uris)
    has_uri = np.fromiter((bool(u) for u in uris), dtype=bool, count=len(uris))
    # Posts without a uri are left for validation to reject with a reason.
    is_done = done.contains(keys) & has_uri
    is_dup = (seen.contains(keys) | _repeats(keys)) & has_uri
    fresh = ~(is_done | is_dup)
    summary.skipped_done += int(is_done.sum())
    summary.skipped_duplicate += int((is_dup & ~is_done).sum())
    seen.add(keys[fresh])
    carry.append(pa.Table.from_batches([batch]).filter(pa.array(fresh)))
    carried += int(fresh.sum())
    if carried >= config.queue.batch_size:
        carried = _flush(store, carry, config.queue.batch_size, summary, final=False)
    return carried


def _repeats(keys: np.ndarray) -> np.ndarray:
    """True for the second and later occurrence of a key within one record batch."""
    _, first = np.unique(keys, return_index=True)
    mask = np.ones(len(keys), dtype=bool)
    mask[first] = False
    return mask


def _flush(store: QueueStore, carry: list[pa.Table], batch_size: int, summary: RunSummary,
           final: bool) -> int:
    """Enqueue whole rows of ``batch_size``; keep the remainder for the next record batch."""
    table = pa.concat_tables(carry) if len(carry) > 1 else carry[0] if carry else None
    carry.clear()
    if table is None or table.num_rows == 0:
        return 0
    cut = table.num_rows if final else table.num_rows - table.num_rows % batch_size
    if cut:
        res = store.enqueue(table.slice(0, cut), batch_size=batch_size)
        summary.enqueued += res.enqueued_posts
        summary.skipped_done += res.skipped_done
        summary.skipped_queued += res.skipped_queued
        summary.rejected_invalid += len(res.invalid)
        for reason, n in res.invalid_by_reason.items():
            summary.invalid_by_reason[reason] = summary.invalid_by_reason.get(reason, 0) + n
    rest = table.slice(cut)
    if rest.num_rows:
        carry.append(rest)
    return rest.num_rows
