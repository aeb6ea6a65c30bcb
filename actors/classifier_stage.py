"""The Ray Data ``map_batches`` stage: load the classifier once, label one block per call.

Each block is labelled in ``classify`` calls of ``batch_size`` posts, and each call's result
rows go straight to the WriterActor (by object reference, never through the driver), so
results leave the stage every ``batch_size`` posts whatever the model's speed; Ray Data only
sees a one-row count per block. Every call is reported to the StageReports, which is what the
run's progress guard and display read.

No exception may escape ``__call__`` for a post's sake (it would abort the whole dataset):
posts that fail are isolated by bisection and come out as failure rows carrying their reason;
posts that kill the process are found through the StageReports's journal
(``classifiers/crash_isolation.py``). What cannot succeed for any post — a classifier that
cannot be built, a rejected key, outputs of clashing types — is reported to the StageReports
as fatal and raised, so the driver stops the run with that one line.
"""
from __future__ import annotations

import collections
import os
import threading
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from classifiers.crash_isolation import BlockState, classify_guarded
from classifiers.poison import Outcome
from classifiers.protocol import FatalClassifierError
from classifiers.registry import build_classifier
from classifiers.scrub import register_secret, scrub
from queue_store.rows.column_types import TypeClash
from queue_store.rows.shapes import (CONTROL, LABEL_TIME, LABEL_TIME_TYPE, POST_COLUMNS,
                                    RESERVED)
from queue_store.rows.typed import fit_rows, typed_columns

MAX_SENDS_IN_FLIGHT = 2  # result tables on their way to the writer, per actor
STATUS_EVERY_S = 2.0


class MonitorJournal:
    """The crash journal kept by the StageReports: begin/set_active are awaited (they must
    be recorded before the posts run); end goes with the stage's report of the call
    (``report_call``, not awaited), sent as soon as ``classify`` returns."""

    def __init__(self, monitor: Any) -> None:
        self.monitor = monitor
        self.ended: str | None = None

    def begin(self, key: str, n_posts: int) -> BlockState | None:
        import ray

        return ray.get(self.monitor.journal_begin.remote(key, n_posts))

    def set_active(self, key: str, posts: list[int]) -> None:
        import ray

        ray.get(self.monitor.journal_set_active.remote(key, posts))

    def end(self, key: str) -> None:
        self.ended = key

    def take_ended(self) -> str | None:
        """The key ``end`` was given since the last report (None: none), for the report."""
        key, self.ended = self.ended, None
        return key


def block_key(batch: pa.Table) -> str:
    """Names a block across retries of the same task (leases make it unique per claim)."""
    uri = batch.column("uri")
    return (f"{batch.column('batch_id')[0]}:{batch.column('lease_id')[0]}:"
            f"{uri[0]}:{uri[-1]}:{batch.num_rows}")


class TimedClassifier:
    """The classifier, with the process CPU time its ``classify`` calls take summed up (to
    tell the stage's own per-post cost apart from the model's)."""

    def __init__(self, classifier: Any) -> None:
        self.inner = classifier
        self.cpu_s = 0.0

    def classify(self, texts: list[str]) -> Any:
        start = time.process_time()
        try:
            return self.inner.classify(texts)
        finally:
            self.cpu_s += time.process_time() - start

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def fixed_type_clash(integration: str, why: str, where: str) -> TypeClash:
    """Labels whose type the integration's fixed column types cannot take: the one error
    (and line) for it, whether the stage or the writer finds it. No retry can change a type,
    so it stops the run."""
    return TypeClash(f"integration {integration}: {why} (fixed by the labels already written "
                     f"under {where} or queued for it); labels of another type need their own "
                     "place — give this integration block another name, or use another "
                     "data_dir and output_dir. Nothing was retried; this run's claims were "
                     "handed back")


class ClassifierStage:
    """``map_batches(ClassifierStage, **ClassifierStage.map_batches_options(...))``."""

    @classmethod
    def map_batches_options(cls, *, classifier_type: str, params: dict[str, Any],
                            batch_size: int, num_cpus: float, num_gpus: float,
                            compute: Any, whole_blocks: bool, **stage: Any) -> dict[str, Any]:
        """The stage's Ray Data options: its actor pool (``compute``) and resources, and its
        constructor's arguments (``stage``: the rest of ``__init__``'s). ``whole_blocks``:
        Ray Data hands whole blocks (the stage splits them into ``batch_size`` calls)."""
        return {"fn_constructor_kwargs": {"classifier_type": classifier_type, "params": params,
                                          "batch_size": batch_size, **stage},
                "compute": compute, "batch_size": None if whole_blocks else batch_size,
                "batch_format": "pyarrow", "num_cpus": num_cpus, "num_gpus": num_gpus}

    def __init__(self, classifier_type: str, params: dict[str, Any], batch_size: int,
                 run_id: str, integration: str, monitor: Any, writer: Any, config_hash: str,
                 secrets: dict[str, str], fixed_types: pa.Schema | None,
                 output_dir: str) -> None:
        for name, value in secrets.items():  # e.g. an API key, never logged
            os.environ.setdefault(name, value)
            register_secret(value)
        self.monitor = monitor
        self.writer = writer
        self.integration = integration
        self.batch_size = batch_size  # Ray Data hands whole blocks: split them here
        # The output's column types when the run started: a call whose labels cannot take
        # them stops the run here, before the next call spends more (the writer checks the
        # types fixed during the run).
        self.fixed_types = fixed_types
        self.output_dir = output_dir
        self.actor_key = f"{os.getpid()}-{id(self)}"
        self._tell("report_actor", self.actor_key, "loading")
        try:
            classifier = build_classifier(classifier_type, params)
        except Exception as exc:
            self._fatal(f"classifier {classifier_type!r} could not be built: "
                        f"{type(exc).__name__}: {exc}")
            raise
        self.classifier = TimedClassifier(classifier)
        self.journal = MonitorJournal(monitor)
        self.posts = 0
        self.sends: collections.deque = collections.deque()
        self.cpu_start = time.process_time()  # the model is loaded: count from here
        self.fixed = {**classifier.provenance.columns(), "config_hash": config_hash,
                      "run_id": run_id}
        self._tell("report_actor", self.actor_key, "ready")
        if callable(getattr(classifier, "status", None)):
            threading.Thread(target=self._watch_status, daemon=True).start()

    # -- reporting -------------------------------------------------------------------------
    def _tell(self, method: str, *args: Any) -> None:
        """A report to the StageReports, not awaited (figures only)."""
        getattr(self.monitor, method).remote(*args)

    def _fatal(self, message: str, exit_code: int = 2) -> None:
        """Tell the driver the true cause before the dataset is aborted."""
        import ray

        ray.get(self.monitor.report_fatal.remote(scrub(message)[:1000], exit_code))

    def _report_usage(self) -> None:
        usage = getattr(self.classifier, "usage", None)
        if callable(usage):
            counts = usage()
            if counts:
                self._tell("add_usage", counts)

    def _watch_status(self) -> None:
        """What a hosted classifier waits on (a rate limit, a server that does not answer),
        passed on while ``classify`` is still busy with it."""
        last: dict[str, str] = {}
        while True:
            time.sleep(STATUS_EVERY_S)
            try:
                status = {k: scrub(v) for k, v in self.classifier.status().items()}
            except Exception:  # noqa: BLE001 - a display never fails the stage
                continue
            if status != last:
                self._tell("report_waiting", self.actor_key, status)
                last = status

    # -- one block -------------------------------------------------------------------------
    def __call__(self, batch: pa.Table) -> pa.Table:
        """Label a block in ``batch_size`` calls; each call's result rows (the claim they
        answer, the post's fields, labelled or not and why, the typed outputs) go to the
        WriterActor as soon as that call returns. Returns the block's post count."""
        n = batch.num_rows
        texts = batch.column("text").to_pylist()
        for start in range(0, n, self.batch_size):
            part = batch.slice(start, self.batch_size)
            try:
                try:
                    outcomes = classify_guarded(self.classifier,
                                                texts[start:start + self.batch_size],
                                                block_key(part), self.journal)
                finally:
                    self._report_usage()
            except FatalClassifierError as exc:  # fail no post: stop the run, claims back
                self._fatal(str(exc))
                raise
            except Exception as exc:  # noqa: BLE001 - last line of defence: fail the rows
                outcomes = [Outcome(None, f"stage error: {type(exc).__name__}: {exc}"[:500])
                            ] * part.num_rows
            self.posts += part.num_rows
            outside = time.process_time() - self.cpu_start - self.classifier.cpu_s
            self._tell("report_call", self.actor_key, self.journal.take_ended(), self.posts,
                       outside)
            self._send(self._result_rows(part, outcomes))
        self._drain()
        return pa.table({"posts": pa.array([n], pa.int64())})

    def _result_rows(self, part: pa.Table, outcomes: list[Outcome]) -> pa.Table:
        n = part.num_rows
        labels = [out.labels for out in outcomes]  # None where the post failed
        reasons = [None if out.reason is None else scrub(out.reason) for out in outcomes]
        names, arrays, misfits = typed_columns(labels)
        clash = RESERVED.intersection(names)
        if clash:
            message = (f"integration {self.integration}: the classifier's outputs use "
                       f"reserved column name(s) {sorted(clash)}; rename them in the "
                       "classifier (these names belong to the output layout)")
            self._fatal(message)
            raise FatalClassifierError(message)
        if misfits:  # the one check of a classifier's results: types within the call ...
            clash = TypeClash(f"integration {self.integration}: "
                              f"{next(iter(misfits.values()))}; a label column keeps one "
                              "type — fix the classifier so every post gets the same type")
        elif self.fixed_types is not None and names:  # ... and against the output's types
            _, misfits = fit_rows(pa.table(dict(zip(names, arrays))), self.fixed_types)
            clash = misfits and fixed_type_clash(self.integration,
                                                 next(iter(misfits.values())), self.output_dir)
        if misfits:
            self._fatal(str(clash))
            raise clash
        why = pa.array(reasons, pa.string())
        columns = {name: part.column(name) for name in (*CONTROL, *POST_COLUMNS)}
        columns["was_successfully_labeled"] = pc.is_null(why)  # the STATUS columns
        columns["reason"] = why
        now = np.datetime64(datetime.now(timezone.utc).replace(tzinfo=None), "us")
        columns[LABEL_TIME] = pa.array(np.full(n, now), LABEL_TIME_TYPE)
        columns.update(zip(names, arrays))
        for name, value in self.fixed.items():
            columns[name] = pa.array([value] * n, pa.string())
        return pa.table(columns)

    def _send(self, table: pa.Table) -> None:
        """Hand a call's result rows to the writer; at most ``MAX_SENDS_IN_FLIGHT`` unanswered
        (a writer error — a label of the wrong type, a full disk — surfaces here)."""
        import ray

        self.sends.append(self.writer.consume.remote(table))
        while len(self.sends) > MAX_SENDS_IN_FLIGHT:
            ray.get(self.sends.popleft())

    def _drain(self) -> None:
        import ray

        while self.sends:
            ray.get(self.sends.popleft())
