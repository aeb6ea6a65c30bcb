"""WriterActor: turns the result stream into labelled parquet files and fenced completions.

Classifier actors send it each ``classify`` call's result rows. Rows are grouped per (batch,
lease); once every post of every batch one claim took has a result, the claim is whole.
Whole claims are completed together, up to ``complete_posts`` posts: their labelled rows are
written once, as a staged parquet file per post day (``queue_store.staging``), and one fenced
``complete`` goes to the QueueActor: it acks their batches and records the file in one
transaction. A whole claim waits for others to join it only while results keep arriving
(``IDLE_S``), and at most ``complete_within_s``; a batch whose results are all in waits at
most that long for the rest of its claim (a thread of the writer's own checks), then
completes with the batches done so far: a slow model's labels still leave every few seconds.
Recorded files are published (moved to their final names in the output) every
``export_rows`` rows or ``export_every_seconds``, and at the end; a crash leaves them
recorded, and the next command publishes them. Staged files no commit names (a crash before
the commit; a commit fenced out, whose file the writer deletes at once) are garbage: the
writer deletes those of dead runs when it starts and when it finishes.

A labelled row whose values cannot take the integration's fixed column types is not a post's
failure but the run's: no retry can change a type. The writer reports it to the StageReports
as fatal (one line: integration, column, both types, the way out) and completes nothing of
that batch, so the run stops and hands its claims back. A parquet write that fails for the
disk's sake (full, read-only) is reported the same way, with the path and the errno.
"""
from __future__ import annotations

import ctypes
import threading
import time
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actors.classifier_stage import fixed_type_clash
from actors.stats import WriterStats
from queue_store.location import Location
from queue_store import QueueStore, export_output
from queue_store.models import Ack, StagedOutput
from queue_store.rows.column_types import concat_conformed, merge_schema
from queue_store.rows.shapes import CONTROL, POST_COLUMNS, STATUS, post_of
from queue_store.rows.typed import fit_rows
from queue_store.staging import collect_garbage, discard, stage

T = TypeVar("T")


def claim_runs(table: pa.Table) -> Iterator[tuple[tuple[int, str], int, int, pa.Table]]:
    """``((batch_id, lease_id), batch_posts, claim_posts, rows)`` for each run of rows
    answering one claimed batch (a block holds whole batches in order, and a batch may
    continue in the next block)."""
    ids = table.column("batch_id").to_numpy()
    leases = pc.dictionary_encode(table.column("lease_id")).combine_chunks().indices.to_numpy()
    cuts = np.flatnonzero((ids[1:] != ids[:-1]) | (leases[1:] != leases[:-1])) + 1
    bounds = [0, *cuts.tolist(), table.num_rows]
    for start, end in zip(bounds, bounds[1:]):
        first = table.slice(start, 1)
        key = (first.column("batch_id")[0].as_py(), first.column("lease_id")[0].as_py())
        yield (key, first.column("batch_posts")[0].as_py(),
               first.column("claim_posts")[0].as_py(), table.slice(start, end - start))


def distinct_posts(rows: pa.Table) -> pa.Table:
    """``rows`` with each uri once (its first row)."""
    uris = rows.column("uri")
    if pc.count_distinct(uris).as_py() == rows.num_rows:
        return rows
    first = pc.index_in(pc.unique(uris), value_set=uris)  # first position of each uri
    return rows.take(np.sort(first.to_numpy()))


def label_counts(labelled: pa.Table | None) -> dict[str, int]:
    """How many rows carry each value of ``label`` (none for a list-valued label)."""
    if labelled is None or "label" not in labelled.column_names:
        return {}
    try:
        counts = pc.value_counts(labelled.column("label")).to_pylist()
    except pa.ArrowNotImplementedError:  # e.g. a list-valued label: no distribution
        return {}
    return {str(c["values"]): c["counts"] for c in counts if c["values"] is not None}


MAX_UNSETTLED = 16  # completions in flight to the QueueActor before waiting for answers
# Whole claims wait for more to share their completion only while result rows keep coming:
# once none has arrived for this long, what is whole completes (the end of a pass, a slow
# model). Fewer, larger completions: one QueueActor call and transaction, and one staged
# file per day, for several claims.
IDLE_S = 0.1


def fixed_mmap_threshold(nbytes: int = 131_072) -> None:
    """The writer frees a large buffer per export; glibc's adaptive mmap threshold would then
    serve those from the heap and fragment it (measured: 100 MB → 430 MB over a 1M-post run).
    A fixed threshold (what MALLOC_MMAP_THRESHOLD_ sets, here without a runtime_env, whose
    worker took ~1 s longer to start) keeps large buffers mmapped and returned. Off glibc:
    nothing."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, nbytes)  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def storage_message(out_dir: str, exc: OSError) -> str:
    """One line for a parquet write the disk refused: the path and the errno."""
    where = getattr(exc, "filename", None) or out_dir
    code = f"errno {exc.errno}, " if exc.errno else ""
    return (f"cannot write parquet under {where}: {exc.strerror or exc} ({code}"
            f"{type(exc).__name__}); free space or fix the folder's permissions, then "
            "rerun: labels already completed stay recorded and are published then")


class WriterActor:
    def __init__(self, queue: Any, data_dir: str, integration: str, max_attempts: int,
                 out: Location, export_rows: int, export_every_seconds: float,
                 monitor: Any, run_id: str, complete_within_s: float,
                 complete_posts: int) -> None:
        fixed_mmap_threshold()

        self.queue = queue  # completions go through the QueueActor (one fenced call each)
        self.monitor = monitor
        self.integration = integration
        self.run_id = run_id  # its staged files' folder
        # Publishing and column types on a connection of the writer's own: they are rare,
        # and their transactions are as fenced as anyone's.
        self.store = QueueStore(data_dir, integration, max_attempts=max_attempts)
        self.out = out  # a local folder or an object store
        self.out_dir = str(out)
        self.export_rows = export_rows
        self.export_every_seconds = export_every_seconds
        self.open: dict[tuple[int, str], dict[str, Any]] = {}
        self.claims: dict[str, dict[str, Any]] = {}  # lease → its batches complete so far
        self.ready: list[tuple[str, list[tuple[int, pa.Table]]]] = []  # to complete together
        self.ready_posts = 0
        self.ready_since = float("inf")  # when the oldest of them had its results
        self.last_rows = time.monotonic()  # when result rows last arrived
        self.completing: list[tuple[Any, dict[str, Any]]] = []
        self.unpublished_rows = 0
        self.last_export = time.monotonic()
        self.stats = WriterStats()
        self.schema = self.store.export_schema()  # the integration's fixed column types
        self._storage(lambda: collect_garbage(self.store, self.out, keep=run_id))
        self.complete_within_s = complete_within_s
        self.complete_posts = complete_posts
        self._lock = threading.Lock()  # the claims, between consume and the waiting thread
        self.broken: Exception | None = None  # what stopped the waiting thread, raised later
        self._stop = threading.Event()
        threading.Thread(target=self._complete_waiting, daemon=True).start()
        self.cpu_at_start = time.process_time()  # after imports and set-up

    def consume(self, table: pa.Table) -> None:
        """The result rows of one ``classify`` call (or a part of one)."""
        if not table.num_rows:
            return
        with self._lock:
            self._raise_broken()
            self.last_rows = time.monotonic()
            self._consume(table)

    def _consume(self, table: pa.Table) -> None:
        self._note_provenance(table)
        self.stats.result_rows += table.num_rows
        table = self._fitted(table)  # a type clash stops the run at the first call, not batch
        for key, expected, claim_posts, part in claim_runs(table):
            group = self.open.setdefault(key, {"expected": expected, "parts": [], "rows": 0})
            group["parts"].append(part)
            group["rows"] += part.num_rows
            if group["rows"] < expected:
                continue
            rows = distinct_posts(concat_conformed(group["parts"]))
            if rows.num_rows < expected:  # a post delivered twice counts once
                group["parts"], group["rows"] = [rows], rows.num_rows
                continue
            del self.open[key]
            claim = self.claims.setdefault(key[1], {"expected": claim_posts, "posts": 0,
                                                    "batches": [], "since": None})
            claim["batches"].append((key[0], rows))
            claim["posts"] += rows.num_rows
            claim["since"] = claim["since"] or time.monotonic()
            if claim["posts"] >= claim["expected"]:  # every batch of the claim: whole
                del self.claims[key[1]]
                self._ready(key[1], claim["batches"], claim["since"])
        if self.ready_posts >= self.complete_posts:
            self._complete_ready()
        if len(self.completing) >= MAX_UNSETTLED:
            self._settle()
        if (self.unpublished_rows >= self.export_rows
                or time.monotonic() - self.last_export >= self.export_every_seconds):
            self._export()

    def _complete_waiting(self) -> None:
        """Complete what waited long enough: whole claims once result rows stop arriving
        (``IDLE_S``) or after ``complete_within_s``, and the batches that waited that long
        for the rest of their claim (the others complete later, with another file)."""
        while not self._stop.wait(min(self.complete_within_s / 4, IDLE_S)):
            with self._lock:
                now = time.monotonic()
                try:
                    self._complete_done_batches(now - self.complete_within_s,
                                                idle=now - self.last_rows >= IDLE_S)
                except Exception as exc:  # noqa: BLE001 - a full disk, a type clash:
                    self.broken = exc  # reported as fatal already; raised to the next call
                    return

    def _raise_broken(self) -> None:
        if self.broken is not None:
            raise self.broken

    def complete_whole(self) -> None:
        """Complete the whole claims now and collect the answers: a pass has ended, so no
        result is coming to join them, and their retries must be queued before the driver
        asks what is left to claim."""
        with self._lock:
            self._raise_broken()
            if self.ready:
                self._complete_ready()
            self._settle()

    def _complete_done_batches(self, waited_since: float, idle: bool = False) -> None:
        """Complete the batches with all their results of each claim whose first such batch
        has waited since ``waited_since`` or before, with the whole claims if they waited as
        long (or ``idle``: no result rows are coming)."""
        for lease_id, claim in self.claims.items():
            if claim["batches"] and claim["since"] <= waited_since:
                batches, claim["batches"], since = claim["batches"], [], claim["since"]
                claim["since"] = None
                self._ready(lease_id, batches, since)
        if self.ready and (idle or self.ready_since <= waited_since):
            self._complete_ready()

    def _ready(self, lease_id: str, batches: list[tuple[int, pa.Table]], since: float
               ) -> None:
        """A claim's batches with all their results, to complete with the next group."""
        self.ready.append((lease_id, batches))
        self.ready_posts += sum(rows.num_rows for _, rows in batches)
        self.ready_since = min(self.ready_since, since)

    def _complete_ready(self) -> None:
        claims, self.ready = self.ready, []
        self.ready_posts, self.ready_since = 0, float("inf")
        self._complete(claims)

    def _complete(self, claims: list[tuple[str, list[tuple[int, pa.Table]]]]) -> None:
        """Stage the labelled rows of the claims' batches as one file, then send the fenced
        completion that records it. Not awaited here: the QueueActor runs this caller's calls
        in order, and ``_settle`` collects the answers before any publish or the end."""
        acks, labelled, counts = [], [], {}
        for lease_id, batches in claims:
            for batch_id, rows in batches:
                done, failed = self._split(rows)
                acks.append(Ack(batch_id=batch_id, lease_id=lease_id, failed=failed,
                                labelled=0 if done is None else done.num_rows))
                if done is not None:
                    labelled.append(done)
                    for label, n in label_counts(done).items():
                        counts[label] = counts.get(label, 0) + n
        staged = self._stage(acks, labelled) if labelled else None
        self.completing.append((self.queue.complete.remote(acks, staged), {
            "claims": claims, "staged": staged, "counts": counts}))
        self.unpublished_rows += staged.rows if staged else 0

    def _stage(self, acks: list[Ack], tables: list[pa.Table]) -> StagedOutput:
        staged, self.schema = self._storage(
            lambda: stage(self.store, self.out, self.run_id, acks, tables))
        return staged

    def _fitted(self, table: pa.Table) -> pa.Table:
        """A call's result rows with their label columns cast to the integration's fixed types
        (new or newly typed columns are fixed in the queue file first). Labels that cannot
        take them stop the run (``TypeClash``)."""
        labels = table.drop_columns([*CONTROL, *STATUS])
        wanted = merge_schema(self.schema, labels.schema)
        if wanted != self.schema:  # new or newly typed columns: fixed in the queue file
            self.schema = self.store.save_export_schema(wanted)
        fitted, misfits = fit_rows(labels, self.schema)
        if misfits:
            self._clash(next(iter(misfits.values())))
        for name in (*CONTROL, *STATUS):
            fitted = fitted.append_column(name, table.column(name))
        return fitted

    def _split(self, rows: pa.Table) -> tuple[pa.Table | None, list[tuple[dict, str]]]:
        """A completed batch's labelled rows, in the integration's column types, and
        ``(post, reason)`` for its failed posts."""
        ok = rows.column("was_successfully_labeled")
        failed: list[tuple[dict, str]] = []
        if not pc.all(ok, skip_nulls=False).as_py():  # the usual batch: nothing failed
            failed = [(post_of(r), r["reason"]) for r in
                      rows.filter(pc.invert(ok)).select([*POST_COLUMNS, "reason"]).to_pylist()]
            rows = rows.filter(ok)
        done = rows.drop_columns([*CONTROL, *STATUS])  # cast once, on arrival
        return (done if done.num_rows else None), failed

    def _clash(self, why: str) -> None:
        clash = fixed_type_clash(self.integration, why, self.out_dir)
        self._report_fatal(str(clash), 2)
        raise clash

    def _report_fatal(self, message: str, exit_code: int) -> None:
        import ray

        ray.get(self.monitor.report_fatal.remote(message, exit_code))

    def _storage(self, write: Callable[[], T]) -> T:
        """``write()`` to the output; a refusal of the disk or the store stops the run."""
        try:
            return write()
        except OSError as exc:
            message = storage_message(self.out_dir, exc)
            self._report_fatal(message, 1)
            raise OSError(exc.errno, message) from None

    def _settle(self) -> None:
        """Collect the answers of the completions in flight. One fenced out because a lease
        was lost: its staged file is deleted, and the batches still held are completed
        again without the lost ones (their posts are another run's now)."""
        import ray

        while self.completing:
            pending, self.completing = self.completing, []
            answers = ray.get([ref for ref, _ in pending])
            for res, sent in zip(answers, pending):
                sent = sent[1]
                batches = [b for _, claim in sent["claims"] for b, _ in claim]
                if res["accepted"]:
                    self.stats.completed_batches += len(batches)
                    for label, n in sent["counts"].items():  # labels of completed batches
                        self.stats.label_counts[label] = (
                            self.stats.label_counts.get(label, 0) + n)
                    continue
                if sent["staged"] is not None:
                    self._storage(lambda: discard(self.out, sent["staged"]))
                    self.unpublished_rows -= sent["staged"].rows
                lost = set(res["lost"]) or set(batches)
                self.stats.stale_batches += len(lost)
                kept = [(lease_id, [(b, rows) for b, rows in claim if b not in lost])
                        for lease_id, claim in sent["claims"]]
                if kept := [(lease_id, claim) for lease_id, claim in kept if claim]:
                    self._complete(kept)

    def _note_provenance(self, table: pa.Table) -> None:
        """The classifier and model, from the first successful row."""
        if self.stats.provenance:
            return
        ok = table.filter(table.column("was_successfully_labeled"))
        if ok.num_rows:
            self.stats.provenance = {k: ok.column(k)[0].as_py() or ""
                                     for k in ("classifier", "model")}

    def _export(self) -> None:
        """Publish the recorded files (and export an older queue file's output rows)."""
        self._settle()
        stats = self._storage(lambda: export_output(self.store, self.out, self.export_rows))
        self.stats.exported_rows += stats.rows
        self.stats.parquet_files += stats.files
        self.stats.export_dead_lettered += stats.dead_lettered
        self.unpublished_rows = 0
        self.last_export = time.monotonic()
        self.schema = self.store.export_schema()  # an export may have fixed open columns

    def get_stats(self) -> WriterStats:
        with self._lock:
            return self._stats()

    def _stats(self) -> WriterStats:
        return self.stats.model_copy(update={
            "open_batches": len(self.open) + sum(len(c["batches"])
                                                 for c in self.claims.values())
            + sum(len(batches) for _, batches in self.ready),
            "cpu_s": time.process_time() - self.cpu_at_start})

    def finish(self) -> WriterStats:
        """Complete every batch with all its results, then the final publish; batches still
        open here had results lost in flight (their leases are handed back, or expire, and a
        later run redoes them)."""
        self._stop.set()
        with self._lock:  # after a broken waiting thread, too: what it could not, retried
            self._complete_done_batches(float("inf"), idle=True)
            self._export()
            # What dead runs staged and never committed, also of those whose leases this
            # run's claims took back after it started.
            self._storage(lambda: collect_garbage(self.store, self.out, keep=self.run_id))
            return self._stats()
