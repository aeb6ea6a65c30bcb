"""Stage 1: stream posts into an integration's input queue, skipping what is already known.

Posts already in the integration's parquet output and repeats within this run are filtered
here; whether a post is new to the queue is decided by the queue's uri ledger inside the
enqueue transaction, so concurrent enqueues never queue a post twice.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from jobs.config import BackfillConfig
from jobs.posts.known_uris import KnownUris, digests
from jobs.posts.source import PostFiles, iter_posts
from jobs.stages.progress import Figures, Progress
from jobs.stages.summary import RunSummary
from jobs.stages.summary import now_iso, new_run_id
from queue_store import QueueStore
from queue_store.rows.validation import as_post_table


def labelled_uris(root: Path, version: str, batch_rows: int = 100_000
                  ) -> tuple[KnownUris, KnownUris]:
    """The uris already in the integration's parquet output: (labelled by ``version``,
    labelled by another config_hash only). Rows written before config_hash existed count as
    another version."""
    same, other = KnownUris(), KnownUris()
    if not root.exists():
        return same, other
    dataset = pads.dataset(root, format="parquet", partitioning="hive")
    has_hash = "config_hash" in dataset.schema.names
    columns = ["uri", "config_hash"] if has_hash else ["uri"]
    for batch in dataset.to_batches(columns=columns, batch_size=batch_rows):
        uris = batch.column("uri").to_pylist()
        hashes = batch.column("config_hash").to_pylist() if has_hash else [None] * len(uris)
        same.update(u for u, h in zip(uris, hashes) if h == version)
        other.update(u for u, h in zip(uris, hashes) if h != version)
    return same, other


def enqueue_posts(config: BackfillConfig, integration: str, files: PostFiles,
                  quiet: bool = False, relabel: bool = False) -> RunSummary:
    """Enqueue the posts of ``files`` (chosen by ``find_post_files``) for one integration.
    Posts labelled by another config_hash are skipped (counted) unless ``relabel``."""
    name, integ = config.resolve_integration(integration)
    version = integ.classifier.config_hash
    summary = RunSummary(run_id=new_run_id(name), integration=name, stage="enqueue",
                         started_at=now_iso(), config_hash=version)
    t0 = time.monotonic()
    summary.skipped_bad_files = len(files.bad)
    for _, rows, reason in files.rejected:  # readable files without usable columns
        summary.rows_read += rows
        summary.rejected_invalid += rows
        summary.invalid_by_reason[reason] = summary.invalid_by_reason.get(reason, 0) + rows
    store = QueueStore(config.data_dir, name, max_attempts=config.queue.max_attempts)
    try:
        done, other = labelled_uris(config.output_root / name, version)
        versions = Versions(version, other, relabel)
        seen = KnownUris()  # this run's posts: duplicates in the input are skipped too
        carry: list[pa.Table] = []
        carried = 0
        shown = Progress(f"enqueue {name}", files.good_rows, lambda: Figures(
            done=summary.rows_read, failed=summary.rejected_invalid), quiet=quiet,
            failed_name="invalid", show_dead=False)
        with shown:
            for batch in iter_posts(files, config.posts.read_batch_rows):
                carried = _add_batch(store, batch, done, versions, seen, carry, carried,
                                     config, summary)
            _flush(store, carry, versions, config.queue.batch_size, summary, final=True)
    finally:
        store.close()
    return summary.finish(config.data_dir, t0, summary.enqueued + summary.rejected_invalid)


class Versions(NamedTuple):
    """This run's config_hash, the uris labelled only by others, and whether to relabel."""

    version: str
    other: KnownUris
    relabel: bool


def _add_batch(store: QueueStore, batch: pa.RecordBatch, done: KnownUris, versions: Versions,
               seen: KnownUris, carry: list[pa.Table], carried: int, config: BackfillConfig,
               summary: RunSummary) -> int:
    """Filter one record batch (repeated, done, other version) and enqueue whole queue rows
    of it. A uri counts once: its first occurrence as done / other-version / queued, every
    later one as a duplicate."""
    summary.rows_read += batch.num_rows
    table = as_post_table(batch)  # text types unified; a bad byte rejects its post later
    uris = table.column("uri").to_pylist() if pa.types.is_string(table.column("uri").type) \
        else [None] * table.num_rows
    keys = digests(u if isinstance(u, str) else "" for u in uris)
    has_uri = np.fromiter((isinstance(u, str) and bool(u) for u in uris), dtype=bool,
                          count=len(uris))
    # Posts without a uri are left for validation to reject with a reason.
    is_dup = (seen.contains(keys) | _repeats(keys)) & has_uri
    is_done = done.contains(keys) & has_uri & ~is_dup
    is_other = versions.other.contains(keys) & has_uri & ~is_done & ~is_dup
    if versions.relabel:
        is_other[:] = False  # the ledger decides: queued again for this version
    fresh = ~(is_done | is_other | is_dup)
    summary.skipped_done += int(is_done.sum())
    summary.skipped_other_version += int(is_other.sum())
    summary.skipped_duplicate += int(is_dup.sum())
    seen.add(keys[has_uri & ~is_dup])
    carry.append(table.filter(pa.array(fresh)))
    carried += int(fresh.sum())
    if carried >= config.queue.batch_size:
        carried = _flush(store, carry, versions, config.queue.batch_size, summary, final=False)
    return carried


def _repeats(keys: np.ndarray) -> np.ndarray:
    """True for the second and later occurrence of a key within one record batch."""
    _, first = np.unique(keys, return_index=True)
    mask = np.ones(len(keys), dtype=bool)
    mask[first] = False
    return mask


def _flush(store: QueueStore, carry: list[pa.Table], versions: Versions, batch_size: int,
           summary: RunSummary, final: bool) -> int:
    """Enqueue whole rows of ``batch_size``; keep the remainder for the next record batch."""
    table = (pa.concat_tables(carry, promote_options="default") if len(carry) > 1
             else carry[0] if carry else None)
    carry.clear()
    if table is None or table.num_rows == 0:
        return 0
    cut = table.num_rows if final else table.num_rows - table.num_rows % batch_size
    if cut:
        res = store.enqueue(table.slice(0, cut), batch_size=batch_size,
                            version=versions.version, relabel=versions.relabel)
        summary.enqueued += res.enqueued_posts
        summary.skipped_done += res.skipped_done
        summary.skipped_queued += res.skipped_queued
        summary.skipped_other_version += res.skipped_other_version
        summary.relabelled += res.relabelled
        summary.rejected_invalid += len(res.invalid)
        for reason, n in res.invalid_by_reason.items():
            summary.invalid_by_reason[reason] = summary.invalid_by_reason.get(reason, 0) + n
    rest = table.slice(cut)
    if rest.num_rows:
        carry.append(rest)
    return rest.num_rows
