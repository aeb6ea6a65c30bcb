"""Stage 1: stream posts into integrations' input queues, each post once per config version.

One read of the posts feeds every integration of the command: each batch is read, sampled
and validated once, then offered to each integration's queue.

Whether a post is new is decided by the queue's ledger inside each enqueue transaction
(``queue_store/ledger.py``): it knows every post ever queued for the integration — repeats
in this run's input, earlier runs, and (recorded once, when a queue file is newer than the
parquet output beside it) posts already labelled there — so concurrent enqueues never queue
a post twice, and there is one dedupe, not three. Posts are handed over in chunks of about
``queue.enqueue_chunk_posts``, one transaction each: an inference run streaming beside the
enqueue claims each chunk as soon as it is committed.
"""
from __future__ import annotations

import time
from typing import Any, Iterator, Sequence

import pyarrow as pa

from jobs.config import BackfillConfig
from jobs.posts.selection import Selection
from jobs.posts.source import PostFiles, iter_posts
from jobs.stages.progress import Figures, Progress
from jobs.stages.summary import RunSummary, new_run_id, now_iso
from queue_store import EnqueueSession, QueueStore
from queue_store.location import Location
from queue_store.rows.validation import Validated, as_post_table, split_valid
from queue_store.staging import publish

SEEDED = "output_seeded"  # meta flag: the ledger knows every post in the parquet output


def enqueue_posts(config: BackfillConfig, integrations: Sequence[str], files: PostFiles,
                  quiet: bool = False, relabel: bool = False,
                  selection: Selection | None = None,
                  batches: Iterator[pa.RecordBatch] | None = None) -> list[RunSummary]:
    """Enqueue the posts of ``files`` (chosen by ``find_post_files``) for each of
    ``integrations``, reading and validating each post once for all of them; one summary per
    integration. Posts queued or labelled for another config_hash are skipped (counted)
    unless ``relabel``; ``selection`` samples and windows them (counted too). ``batches``:
    posts chosen otherwise (``-r posts_used_in_feeds``) instead of every post of ``files``."""
    t0 = time.monotonic()
    targets: list[Target] = []
    try:
        for integration in integrations:
            targets.append(Target.open(config, integration, files, relabel))
        feed = Feed(targets, config.queue.batch_size, config.queue.enqueue_chunk_posts,
                    selection or Selection())
        first = targets[0].summary
        total = None if batches else files.good_rows  # feeds: not known up front
        label = "enqueue " + ", ".join(t.summary.integration for t in targets)
        shown = Progress(label, total, lambda: Figures(
            done=first.rows_read, failed=first.rejected_invalid), quiet=quiet,
            failed_name="invalid", show_dead=False)
        with shown:
            batches = batches or iter_posts(files, config.posts.read_batch_rows)
            while True:
                started = time.perf_counter()
                batch = next(batches, None)
                feed.timed("read", started)
                if batch is None:
                    break
                feed.add(batch)
            feed.flush(final=True)
    finally:
        for target in targets:
            target.store.close()
    summaries = []
    for target in targets:
        s = target.summary
        s.step_s = {k: round(v, 3) for k, v in s.step_s.items()}
        summaries.append(s.finish(config.data_dir, t0, s.enqueued + s.rejected_invalid))
    return summaries


def remember_output(store: QueueStore, root: Location, batch_rows: int = 100_000) -> None:
    """Once per queue file: record in its ledger the posts already in the integration's
    parquet output (each under the config_hash it was labelled with; rows from before
    config_hash existed count as another version), so a queue file newer than its output —
    moved away, deleted, re-created — never queues them again."""
    if store.flag(SEEDED):
        return
    for uris, config_hash in output_uris(root, batch_rows):
        store.remember(uris, config_hash)
    store.set_flag(SEEDED)


def adopt_deferred(store: QueueStore, classifier: Any) -> int:
    """Posts queued with ``--classifier-later`` before a model or file the classifier's
    config_hash holds was there (under the hash computed then) are queued for the hash
    computed now that everything is there, each post once (``QueueStore.adopt``); returns how
    many. Nothing while something is still missing: the hash now is itself such a hash."""
    from classifiers.config_hash import deferred_hashes, not_there_yet

    if not_there_yet(classifier.type, classifier.params):
        return 0
    return sum(store.adopt(earlier, classifier.config_hash).posts
               for earlier in deferred_hashes(classifier.type, classifier.params))


def rebuild_ledger(store: QueueStore, root: Location) -> int:
    """The queue's ledger written anew from its queue file and the parquet output at ``root``
    (``--rebuild-ledger``), once the labelled files recorded in it are published; returns the
    entries written."""
    publish(store, root)
    entries = store.rebuild_ledger(output_uris(root))
    store.set_flag(SEEDED)
    return entries


def output_uris(root: Location, batch_rows: int = 100_000
                ) -> Iterator[tuple[pa.Array, str]]:
    """``(uris, config_hash)`` chunks of an integration's parquet output, streamed (rows from
    before config_hash existed: ``(unversioned)``)."""
    if not root.has_parquet():
        return
    dataset = root.dataset()
    has_hash = "config_hash" in dataset.schema.names
    for batch in dataset.to_batches(columns=["uri", "config_hash"] if has_hash else ["uri"],
                                    batch_size=batch_rows):
        hashes = batch.column("config_hash") if has_hash else \
            pa.nulls(batch.num_rows, pa.string())
        for version in pa.compute.unique(hashes).to_pylist():
            mine = pa.compute.equal(hashes, version) if version is not None else \
                pa.compute.is_null(hashes)
            yield batch.column("uri").filter(mine), version or "(unversioned)"


class Target:
    """One integration's queue and enqueue summary."""

    def __init__(self, store: QueueStore, config_hash: str, relabel: bool,
                 summary: RunSummary) -> None:
        self.store, self.config_hash, self.relabel, self.summary = (store, config_hash, relabel,
                                                                   summary)
        self.session = EnqueueSession()  # tells this stage's own repeats from earlier posts

    @classmethod
    def open(cls, config: BackfillConfig, integration: str, files: PostFiles,
             relabel: bool) -> "Target":
        name, integ = config.resolve_integration(integration)
        config_hash = integ.classifier.config_hash
        summary = RunSummary(run_id=new_run_id(name), integration=name, stage="enqueue",
                             started_at=now_iso(), config_hash=config_hash)
        summary.skipped_bad_files = len(files.bad)
        for _, rows, reason in files.rejected:  # readable files without usable columns
            summary.rows_read += rows
            summary.rejected_invalid += rows
            summary.invalid_by_reason[reason] = summary.invalid_by_reason.get(reason, 0) + rows
        store = QueueStore(config.data_dir, name, max_attempts=config.queue.max_attempts)
        try:
            started = time.perf_counter()
            remember_output(store, config.output_location(name))
            summary.step_s["seed_from_output"] = time.perf_counter() - started
            summary.adopted_deferred = adopt_deferred(store, integ.classifier)
        except BaseException:
            store.close()
            raise
        return cls(store, config_hash, relabel, summary)


class Feed:
    """Posts on their way into every target's queue: read, sampled and validated once, then
    whole queue rows, about ``chunk_posts`` (rounded to whole queue rows) per transaction."""

    def __init__(self, targets: list[Target], batch_size: int, chunk_posts: int,
                 selection: Selection) -> None:
        self.targets = targets
        self.batch_size = batch_size
        self.chunk = max(batch_size, chunk_posts // batch_size * batch_size)
        self.selection = selection
        self.carry: list[pa.Table] = []
        self.carried = 0

    def timed(self, step: str, started: float) -> None:
        """Add the seconds since ``started`` to ``step`` in every target's figures."""
        seconds = time.perf_counter() - started
        for t in self.targets:
            t.summary.step_s[step] = t.summary.step_s.get(step, 0.0) + seconds

    def add(self, batch: pa.RecordBatch) -> None:
        table = as_post_table(batch)  # text types unified; a bad byte rejects its post later
        table, sampled_out, outside = self.selection.keep(table)
        for t in self.targets:
            t.summary.rows_read += batch.num_rows
            t.summary.sampled_out += sampled_out
            t.summary.outside_window += outside
        self.carry.append(table)
        self.carried += table.num_rows
        if self.carried >= self.chunk:
            self.flush(final=False)

    def flush(self, final: bool) -> None:
        """Enqueue whole queue rows (all that is carried when ``final``)."""
        if not self.carry:
            return
        table = pa.concat_tables(self.carry, promote_options="default") \
            if len(self.carry) > 1 else self.carry[0]
        cut = table.num_rows if final else table.num_rows - table.num_rows % self.batch_size
        rest = table.slice(cut)
        self.carry, self.carried = ([rest], rest.num_rows) if rest.num_rows else ([], 0)
        if not cut:
            return
        started = time.perf_counter()
        checked = split_valid(table.slice(0, cut))  # once, for every target
        self.timed("validate", started)
        for t in self.targets:
            self._enqueue(t, checked)

    def _enqueue(self, t: Target, checked: Validated) -> None:
        res = t.store.enqueue(checked, batch_size=self.batch_size, config_hash=t.config_hash,
                              relabel=t.relabel, session=t.session)
        s = t.summary
        s.enqueued += res.enqueued_posts
        s.skipped_known += res.skipped_known
        s.skipped_duplicate += res.skipped_duplicate
        s.skipped_other_version += res.skipped_other_version
        s.relabelled += res.relabelled
        for step, seconds in res.step_s.items():
            s.step_s[step] = s.step_s.get(step, 0.0) + seconds
        for reason, n in res.invalid_by_reason.items():
            if reason == "duplicate uri":  # a repeat within the chunk: not invalid
                s.skipped_duplicate += n
                continue
            s.rejected_invalid += n
            s.invalid_by_reason[reason] = s.invalid_by_reason.get(reason, 0) + n
