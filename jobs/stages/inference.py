"""One integration's inference run: its QueueActor, WriterActor and passes of a Ray Data job
(read tasks claiming from the queue → ``map_batches`` of ``ClassifierStage``), watched by a
``RunGuard``; ``run_integrations`` runs several side by side (``admission.py``). How a batch
travels through them is the README's "How it works".

Ctrl-C, SIGTERM and every early stop hand the run's claims back, export what was labelled and
end with a partial summary.
"""
from __future__ import annotations

import functools
import gc
import logging
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Sequence

from actors.classifier_stage import ClassifierStage
from actors.queue_actor import QueueActor
from actors.stage_reports import OPTIONS as QUEUE_ACTOR_OPTIONS
from actors.queue_datasource import QueueDatasource
from actors.stats import WriterStats
from actors.writer_actor import WriterActor
from classifiers.scrub import register_secret
from jobs.config import BackfillConfig
from jobs.stages.admission import Background, Together, pool_caps
from jobs.stages.enqueue import adopt_deferred
from jobs.stages.errors import PipelineActorDied, RunStopped, true_cause
from jobs.stages.progress import Progress
from jobs.stages.ray_setup import (check_resources, driver_node_strategy, ensure_ray,
                                   local_ray_alive, ray_where, started_here)
from jobs.stages.run_guard import RunGuard
from jobs.stages.summary import RunSummary
from jobs.stages.summary import new_run_id, now_iso
from queue_store import NoQueueError, QueueFileError, QueueStore, queue_path
from queue_store.lease_holder import LeaseHolder

__all__ = ["run_integrations", "PipelineActorDied"]
WIND_DOWN_S = 60.0  # after a stop: at most this long exporting what was labelled
STREAM_WAVES = 8  # read waves added for a feed of unknown size (one per committed chunk)


def run_integrations(config: BackfillConfig, integrations: Sequence[str],
                     max_records_per_run: int | None = None, quiet: bool = False,
                     verbose: bool = False, feed: Callable[[], Any] | None = None,
                     feed_posts: int | None = None,
                     on_end: Callable[[str, Any], None] | None = None) -> list[Any]:
    """Label every claimable post of each integration, concurrently: each run has its own
    queue, writer and classifier actors, progress line and summary. Runs start together as
    far as the cluster's CPUs and GPUs hold their minimum actor pools (the rest start as
    earlier ones end), and no run's pool grows into another's minimum. A run that stops
    (a rejected key, a dead actor) stops only itself.

    ``feed`` (the same command's enqueue of every integration) runs here while the runs start
    (actors start and load their models meanwhile, read tasks claim each chunk it commits);
    ``feed_posts`` (at most how many posts it queues) sizes the read waves it needs. Ctrl-C or
    SIGTERM stops every run (their claims handed back, what they labelled exported); a feed
    that fails stops them and is raised. Returns one outcome per integration, in order: its
    summary, or what stopped it (``RunStopped`` with its partial summary, or another error);
    ``on_end(name, outcome)`` is called as each ends."""
    stream_waves = 0 if feed is None else STREAM_WAVES if feed_posts is None else \
        -(-feed_posts // config.queue.enqueue_chunk_posts) + 1
    ray = ensure_ray(config, verbose)
    names = [config.resolve_integration(name)[0] for name in integrations]  # codes too
    caps = pool_caps(ray, config, names)
    runs = [InferenceRun(config, name, max_records_per_run, verbose, stream_waves, caps[name])
            for name in names]
    together = Together(ray, config, runs, quiet, on_end or (lambda name, outcome: None))
    try:
        together.admit(feeding=feed is not None)
        if feed is not None:
            try:
                feed()
            finally:
                together.feed_ended()
        together.wait()
    except KeyboardInterrupt:
        together.stop_all(lambda: RunStopped(
            "this run's claims were handed back and what it labelled was exported; rerun "
            "the same command to finish", 130, prefix="interrupted"),
            not_started="not started: rerun the same command to finish")
    except BaseException as exc:  # the feed failed: the runs beside it stop too
        kind = type(exc).__name__
        together.stop_all(lambda: RunStopped(
            f"the enqueue beside this run failed ({kind}); this run's claims "
            "were handed back and what it labelled was exported", 1),
            not_started=f"not started: the enqueue beside it failed ({kind})")
        raise
    finally:
        together.close()
    return [together.outcomes[run.name] for run in runs]


class InferenceRun:
    """One integration's pass(es) over its queue, with the actors they need: ``start``, then
    ``wait`` (on a thread of its own), ``stop`` to end it early."""

    def __init__(self, config: BackfillConfig, integration: str, max_records: int | None,
                 verbose: bool, stream_waves: int = 0, actors_max: int | None = None) -> None:
        self.config = config
        self.name, self.integ = config.resolve_integration(integration)
        self.ray = ensure_ray(config, verbose)
        check_resources(self.ray, self.name, self.integ, config.pipeline.read_task_num_cpus)
        self.verbose = verbose
        self.max_records = max_records
        self.actors_max = actors_max or self.integ.actors.max
        self.run_id = new_run_id(self.name)
        self.summary = RunSummary(run_id=self.run_id, integration=self.name, stage="inference",
                                  started_at=now_iso(), config_hash=self.integ.classifier.config_hash,
                                  resolved_config=config.model_dump(mode="json"))
        self.t0 = time.monotonic()
        self.out = config.output_location(self.name)
        self.out_dir = str(self.out)
        self.actors: list[Any] = []
        self.passes: Background | None = None
        self.abandoned = False
        self.closed = False
        self.stream_waves = stream_waves  # read waves for the chunks a feed commits
        if not verbose:
            # Ray Data's errors reach the run as exceptions; a stopped run's executor
            # shutting down is not news for the console.
            logging.getLogger("ray.data").setLevel(logging.CRITICAL)

    def _start_actors(self, feeding: bool) -> None:
        ray, config = self.ray, self.config
        pinned = {"num_cpus": 0, "scheduling_strategy": driver_node_strategy(ray)}
        data_dir = str(Path(config.data_dir).resolve())
        # Leases name this driver process: if it dies, a rerun on this host reclaims them.
        holder = LeaseHolder.this_process(self.run_id).encode()
        self.queue = ray.remote(**QUEUE_ACTOR_OPTIONS)(QueueActor).options(
            **pinned, name=f"backfill-queue-{self.run_id}").remote(
            data_dir, self.name, config.queue.max_attempts, config.queue.lease_seconds,
            holder, self.summary.config_hash, self.max_records, feeding=feeding)
        self.monitor = self.queue  # the stage's reports: a concurrency group of the QueueActor
        self.writer = ray.remote(WriterActor).options(
            **pinned, name=f"backfill-writer-{self.run_id}").remote(
            self.queue, data_dir, self.name, config.queue.max_attempts, self.out,
            config.pipeline.export_rows, config.pipeline.export_every_seconds, self.monitor,
            self.run_id, config.pipeline.complete_within_s, config.pipeline.complete_posts)
        self.actors = [self.writer, self.queue]

    def start(self, feeding: bool, quiet: bool) -> None:
        """Start the actors, the guard, the progress line and the passes; ``feeding``: the
        same command's enqueue is still queueing posts (``feed_ended`` says when it is done)."""
        self.t0 = time.monotonic()  # a run that waited for room starts its clock here
        self.summary.started_at = now_iso()
        if not feeding:
            self.stream_waves = 0
        self.summary.adopted_deferred = self._adopt_deferred()
        self._start_actors(feeding=feeding)
        pipe = self.config.pipeline
        self.guard = RunGuard(self.ray, self.queue, self.monitor, self.writer,
                              pipe.no_progress_timeout_s,
                              ray_where(self.ray), lost_after_s=pipe.cluster_lost_after_s,
                              budget=self.max_records,
                              local_alive=local_ray_alive if started_here(self.ray) else None)
        self.guard.feeding = feeding
        with ExitStack() as watching:  # the guard, then the progress line; ``wait`` ends them
            watching.enter_context(self.guard)
            watching.enter_context(Progress(f"inference {self.name}", None, self.guard.figures,
                                            quiet=quiet))
            self.passes = Background(functools.partial(self._run_passes, feeding))
            self.watching = watching.pop_all()

    def feed_ended(self) -> None:
        """The enqueue beside this run has committed its last chunk."""
        self._ask(self.queue.close_feed.remote(), 30)  # an actor that is gone: wait() says so
        self.guard.feeding = False

    def stop(self, reason: RunStopped) -> None:
        """End the run early: ``wait`` winds it down and raises ``reason``."""
        self.guard.stop(reason)

    def wait(self) -> RunSummary:
        """Until the passes end; the summary, or ``RunStopped`` with the partial summary."""
        guard = self.guard
        try:
            with self.watching:
                guard.wait_for(self.passes)
                guard.check()  # the last figures, for the progress line's final word
            writer_stats = self.ray.get(self.writer.finish.remote())
            self.ray.get(self.queue.stop.remote())
        except RunStopped as stop:
            raise self._stopped(guard, stop) from None
        except Exception as exc:
            cause = true_cause(self.ray, exc, self.queue, self.writer, self.monitor)
            if isinstance(cause, RunStopped):
                raise self._stopped(guard, cause) from None
            self._release_claims()
            if cause is exc:
                raise
            raise cause from None
        self._summarise(guard, writer_stats)
        return self.summary.finish(self.config.data_dir, self.t0,
                                   self.summary.labelled + self.summary.failed, self.out_dir)

    def _stopped(self, guard: RunGuard, stop: RunStopped) -> RunStopped:
        """Wind down after an early stop: claim nothing more, export what was labelled (at
        most ``WIND_DOWN_S``), hand the claims back; the partial summary rides on ``stop``."""
        reachable = not stop.cluster_lost
        self.abandoned = not reachable  # nothing there to stop or wait for
        writer_stats = None
        if reachable:
            self._ask(self.queue.stop_claiming.remote(str(stop)[:200]), 10)
            writer_stats = self._ask(self.writer.finish.remote(), WIND_DOWN_S)
            if writer_stats is None:
                stop = RunStopped(f"{stop} (the export of what was labelled did not finish "
                                  f"within {WIND_DOWN_S:g} s: those labels stay in the queue "
                                  "file; a rerun, or --write-cache, exports them)",
                                  stop.exit_code, prefix=stop.prefix)
            self._release_claims()
            guard.check()  # the figures as they are now
        # The cluster gone: what the writer last said it exported (its files are there).
        self._summarise(guard, writer_stats or guard.writer_stats, final=reachable)
        stop.summary = self.summary.finish(self.config.data_dir, self.t0,
                                           self.summary.labelled + self.summary.failed,
                                           self.out_dir)
        return stop

    def _ask(self, ref: Any, timeout: float) -> Any:
        try:
            return self.ray.get(ref, timeout=timeout)
        except Exception:  # noqa: BLE001 - winding down: what cannot answer is skipped
            return None

    def _release_claims(self) -> None:
        # The queue actor may be the thing that died: its leases then name this (soon dead)
        # process, and a rerun reclaims them at once.
        self._ask(self.queue.release_outstanding.remote(), 30)

    def _summarise(self, guard: RunGuard, writer_stats: WriterStats, final: bool = True) -> None:
        """The summary from the actors' own figures (``final``), or from the guard's last poll
        when they cannot answer."""
        qs, ss, status = guard.queue_stats, guard.stage_stats, None
        if final:
            qs = self._ask(self.queue.get_stats.remote(), 30) or qs
            ss = self._ask(self.monitor.stage_stats.remote(), 30) or ss
            status = self._ask(self.queue.queue_status.remote(), 30)
        self.summary.take(qs, ss, writer_stats, status)
        cost = getattr(self.integ.classifier.typed, "estimated_cost", None)  # priced ones
        if callable(cost):
            self.summary.estimated_cost = round(cost(self.summary.usage), 6)

    def close(self) -> None:
        """Stop this run's actors; a pass still going (after an early stop) then fails fast,
        and is given a few seconds to wind down here rather than later, elsewhere."""
        if self.abandoned or self.closed:
            return
        self.closed = True
        for actor in self.actors:
            try:
                self.ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if self.passes is not None and self.passes.done.wait(15):
            let_go(self.passes.error)

    # -- passes ----------------------------------------------------------------------------
    def _run_passes(self, first_pass_always: bool = False) -> None:
        """A pass streams whatever is claimable, retries included (see QueueDatasource);
        another pass runs only for what a pass left claimable (e.g. a retry queued after its
        last read wave ended). Stop when the budget is used, nothing is claimable (no actor
        pool is started for an empty queue), or a pass found nothing to claim (another driver
        holds the rest). Whether anything is claimable is asked after reaping, so the claims
        of a run that died (even one that held every batch) are taken back and labelled here.
        The first pass starts at once when the queue file shows posts pending (its actor pool
        then starts while the QueueActor does). Beyond max_attempts+1 passes, work is the
        next run's."""
        ray, queue = self.ray, self.queue
        claimed_before = 0  # a new QueueActor has claimed nothing
        for attempt in range(self.config.queue.max_attempts + 1):
            go_at_once = attempt == 0 and (first_pass_always or self._pending_on_disk())
            if not go_at_once and (ray.get(queue.budget_used.remote())
                                   or not ray.get(queue.claimable_posts.remote())):
                return
            self._one_pass()
            ray.get(self.writer.complete_whole.remote())  # the pass's retries, queued
            claimed = ray.get(queue.get_stats.remote()).claimed_batches
            if claimed == claimed_before and not ray.get(queue.claimable_posts.remote()):
                return
            claimed_before = claimed

    def _adopt_deferred(self) -> int:
        """Posts an enqueue with ``--classifier-later`` queued before this classifier's model
        or files were there: this run's to label (``enqueue.adopt_deferred``)."""
        if not queue_path(self.config.data_dir, self.name).exists():
            return 0
        store = QueueStore(self.config.data_dir, self.name,
                           max_attempts=self.config.queue.max_attempts)
        try:
            return adopt_deferred(store, self.integ.classifier)
        finally:
            store.close()

    def _pending_on_disk(self) -> bool:
        """Posts of this run's config_hash wait in the queue file (a read of the file, without
        the QueueActor; nothing pending, or a file it cannot read now: the QueueActor reaps
        and counts)."""
        return self._read_queue_file(lambda store: store.has_pending(self.summary.config_hash),
                                     False, QueueFileError)

    def _one_pass(self) -> None:
        """Stream every claimable batch through the classifiers (which send their results to
        the writer themselves)."""
        from ray.data import ActorPoolStrategy, DataContext

        pipe, integ = self.config.pipeline, self.integ
        ctx = DataContext.get_current()
        # The RunGuard replaces Ray Data's no-progress guard, which cannot tell a slow model
        # (one block may take longer than any timeout) from a hang.
        ctx.execution_no_progress_timeout_s = -1
        ctx.target_max_block_size = pipe.read_block_bytes
        ctx.enable_progress_bars = self.verbose  # the job's own display is the progress bar
        # Whole blocks to the classifier actors (the stage splits them into batch_size calls):
        # with a batch_size here Ray Data would hold a block smaller than it until the read
        # ends, and a later read wave waiting for in-flight retries would wait for ever.
        # map_batches refuses batch_size=None with GPUs, so its unvalidated twin is used.
        map_whole_blocks = whole_block_mapper(self.ray)
        waves = self.config.queue.max_attempts if map_whole_blocks else 1
        waves += self.stream_waves  # each chunk committed while a read task waits may end one
        self.stream_waves = 0  # a later pass runs after the feed has ended
        source = QueueDatasource(self.queue, pipe.read_tasks, pipe.read_block_bytes,
                                 pipe.batches_per_claim, waves=waves,
                                 wait_for_retries=map_whole_blocks is not None)
        stage = ClassifierStage.map_batches_options(
            classifier_type=integ.classifier.type, params=integ.classifier.params,
            batch_size=integ.batch_size, num_cpus=integ.num_cpus, num_gpus=integ.num_gpus,
            compute=ActorPoolStrategy(min_size=integ.actors.min, max_size=self.actors_max),
            whole_blocks=map_whole_blocks is not None, run_id=self.run_id,
            integration=self.name, monitor=self.monitor, writer=self.writer,
            config_hash=self.summary.config_hash, secrets=_secrets(integ.classifier.typed),
            fixed_types=self._fixed_types(), output_dir=self.out_dir)
        self._stream(source, stage, map_whole_blocks)

    def _stream(self, source: QueueDatasource, stage: dict[str, Any],
                map_whole_blocks: Callable[..., Any] | None) -> None:
        """Ray Data's job of one pass: the read tasks of ``source`` → ``map_batches`` of
        ``ClassifierStage`` with the ``stage`` options, run to its end."""
        import ray.data

        pipe = self.config.pipeline
        ds = ray.data.read_datasource(source, override_num_blocks=pipe.read_tasks,
                                      concurrency=pipe.read_tasks,
                                      num_cpus=pipe.read_task_num_cpus)
        map_batches = map_whole_blocks.__get__(ds) if map_whole_blocks else ds.map_batches
        ds = map_batches(ClassifierStage, **stage)
        # The results went to the writer from the classifier actors; what comes out here is
        # a count per block, never held or deserialised by the driver.
        for _ in ds.iter_internal_ref_bundles():
            pass

    def _fixed_types(self) -> Any:
        """The output's column types as the queue file holds them now (None: not fixed yet,
        also when the pass starts before the QueueActor or the enqueue made the file)."""
        return self._read_queue_file(lambda store: store.export_schema(), None, NoQueueError)

    def _read_queue_file(self, read: Callable[[QueueStore], Any], otherwise: Any,
                         unopenable: type[Exception]) -> Any:
        """``read`` of a read-only open of the queue file; ``otherwise`` if opening it raises
        ``unopenable``."""
        try:
            store = QueueStore(self.config.data_dir, self.name, readonly=True)
        except unopenable:
            return otherwise
        try:
            return read(store)
        finally:
            store.close()


def let_go(exc: BaseException | None) -> None:
    """Drop what a failed pass's exception holds beyond its message and traceback text: the
    variables of its frames (and of the exceptions it arose from) hold Ray Data's executor
    and with it the handles of the run's classifier actors, and an exception and its frames
    form a cycle only Python's cycle collector frees. Until then those actors, and the CPUs
    or GPUs they hold, outlive the run, and in a process that goes on (a notebook, the next
    run of one command) the next run's actor pool waits for them. A pass that ended well
    holds nothing: no collection then (a full one costs a process holding a model ~0.2 s)."""
    if exc is None:
        return
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        tb = exc.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            while frame is not None:  # its callers too: frames of a thread that has ended
                try:
                    frame.clear()
                except RuntimeError:  # still running
                    pass
                frame = frame.f_back
            tb = tb.tb_next
        exc = exc.__cause__ or exc.__context__
    gc.collect()  # and whatever else of the executor's only a cycle kept


def _secrets(params: Any) -> dict[str, str]:
    """The API key a hosted-model classifier names by variable, handed to its actors in
    memory (never in logs, summaries or the config)."""
    name = getattr(params, "api_key_env", None)
    if not (isinstance(name, str) and name in os.environ):
        return {}
    register_secret(os.environ[name])
    return {name: os.environ[name]}


def whole_block_mapper(ray: Any) -> Callable[..., Any] | None:
    """Ray Data's ``map_batches`` without its validation (None on a Ray without it)."""
    return getattr(ray.data.Dataset, "map_batches_internal", None)
