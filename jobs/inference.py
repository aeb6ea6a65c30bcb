"""Stage 2–4 wiring: queue actor → Ray Data read → map_batches(classifier) → writer → parquet.

The flow of one batch: the QueueActor claims it (lease id, lease holder = this driver
process) and hands its stored JSON on undecoded; a Ray Data read task decodes it once into
an Arrow block; a classifier actor (announcing the block to the StageMonitor's crash journal
first) labels it and returns its outputs as typed Arrow columns; the driver passes the result
block's object reference — never the rows — to the WriterActor, which groups rows per batch,
casts them to the integration's fixed column types and sends one fenced ``complete`` per
batch to the QueueActor (lease check, output rows as an Arrow IPC stream, retries: one
SQLite transaction), then exports the output queue to parquet. Failed posts go back to the queue as retry batches, which later
waves of read tasks claim in the same pass (same classifier actors, no model reload); the
run ends when nothing claimable is left, the budget is used, or another driver holds the
rest.
"""
from __future__ import annotations

import functools
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from actors.classifier_stage import ClassifierStage
from actors.queue_actor import QueueActor
from actors.queue_datasource import QueueDatasource
from actors.stage_monitor import StageMonitor
from actors.writer_actor import WriterActor
from jobs.config import BackfillConfig
from jobs.pipeline_errors import PipelineActorDied, true_cause
from jobs.progress import Figures, Progress
from jobs.ray_setup import check_gpus, driver_node_strategy, ensure_ray
from jobs.summary import RunSummary
from jobs.timing import new_run_id, now_iso
from queue_store import QueueStore, export_output
from queue_store.lease_holder import LeaseHolder


def run_inference(config: BackfillConfig, integration: str,
                  max_records_per_run: int | None = None, quiet: bool = False,
                  verbose: bool = False, feed: Callable[[], Any] | None = None) -> RunSummary:
    """Label every claimable post of one integration; returns (and saves) the run summary.

    ``feed`` (the same command's enqueue stage) runs here while the pipeline starts in the
    background, so classifier actors start and load their model meanwhile; read tasks claim
    nothing until it has returned."""
    name, integ = config.resolve_integration(integration)
    ray = ensure_ray(config, verbose)
    check_gpus(ray, name, integ)
    run_id = new_run_id(name)
    summary = RunSummary(run_id=run_id, integration=name, stage="inference", started_at=now_iso(),
                         config_hash=integ.classifier.config_hash,
                         resolved_config=config.model_dump(mode="json"))
    t0 = time.monotonic()
    pinned = {"num_cpus": 0, "scheduling_strategy": driver_node_strategy(ray)}
    data_dir = str(Path(config.data_dir).resolve())
    # Leases name this driver process: if it dies, a rerun on this host reclaims them at once.
    holder = LeaseHolder.this_process(run_id).encode()
    queue = ray.remote(QueueActor).options(**pinned, name=f"backfill-queue-{run_id}").remote(
        data_dir, name, config.queue.max_attempts, config.queue.lease_seconds, holder,
        max_records_per_run, feeding=feed is not None)
    monitor = ray.remote(StageMonitor).options(**pinned,
                                               name=f"backfill-monitor-{run_id}").remote()
    out_dir = str((config.output_root / name).resolve())
    writer = ray.remote(WriterActor).options(**pinned,
                                             name=f"backfill-writer-{run_id}").remote(
        queue, data_dir, name, out_dir, config.pipeline.export_rows,
        config.pipeline.export_every_seconds)
    finished = False
    passes = functools.partial(_run_passes, ray, config, integ, run_id, (queue, monitor),
                               writer, verbose)
    try:
        background = None
        if feed is not None:
            background = Background(functools.partial(passes, first_pass_always=True))
            try:
                feed()
            finally:
                ray.get(queue.close_feed.remote())
        total = ray.get(queue.claimable_posts.remote())
        if max_records_per_run is not None:
            total = min(total, max_records_per_run)

        def figures() -> Figures:
            st = ray.get(queue.get_stats.remote(), timeout=10)
            return Figures(done=st["labelled"] + st["dead_lettered"], failed=st["failed"],
                           dead=st["dead_lettered"])

        with Progress(f"inference {name}", total, figures, quiet=quiet):
            background.join() if background is not None else passes()
        wstats = ray.get(writer.finish.remote())
        qstats = ray.get(queue.stop.remote())
        mstats = ray.get(monitor.get_stats.remote())
        left = ray.get(queue.queue_status.remote())
        finished = True
    finally:
        if not finished:  # failed or interrupted: hand this run's claims back (fenced)
            _release_claims(ray, queue)
        for actor in (writer, queue, monitor):
            ray.kill(actor)
    summary.claimed_batches = qstats["claimed_batches"]
    summary.claimed = qstats["claimed_posts"]
    for key in ("labelled", "failed", "retried", "dead_lettered", "stale_completions"):
        setattr(summary, key, qstats[key])
    summary.process_deaths = mstats["process_deaths"]
    summary.stage_us_per_post = mstats["stage_us_per_post"]
    summary.usage = mstats["usage"]
    params = integ.classifier.params
    cost = (summary.usage.get("prompt_tokens", 0) * params.get("cost_per_1k_prompt_tokens", 0)
            + summary.usage.get("completion_tokens", 0)
            * params.get("cost_per_1k_completion_tokens", 0)) / 1000
    summary.estimated_cost = round(cost, 6)
    summary.reaped_dead_holder_batches = qstats["reaped_dead_holder_batches"]
    summary.export_dead_lettered = qstats["export_dead_lettered"]
    summary.pending_left = left["pending_posts"]
    summary.leased_elsewhere = left["processing_posts"]
    if left["next_lease_expiry"]:
        summary.leases_expire_in_s = round(max(0.0, left["next_lease_expiry"] - time.time()), 1)
    summary.incomplete_batches = wstats["incomplete_batches"]
    summary.exported_rows = wstats["exported_rows"]
    summary.parquet_files = wstats["parquet_files"]
    summary.classifier = wstats["provenance"].get("classifier", "")
    summary.model = wstats["provenance"].get("model", "")
    summary.label_distribution = wstats["label_counts"]
    return summary.finish(config.data_dir, t0, summary.labelled + summary.failed, out_dir)


class Background:
    """Runs ``fn`` on a daemon thread; ``join`` waits and re-raises what it raised."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to join()
            self.error = exc

    def join(self) -> None:
        while self.thread.is_alive():
            self.thread.join(timeout=0.5)  # short waits: Ctrl-C stays responsive
        if self.error is not None:
            raise self.error


def _run_passes(ray: Any, config: BackfillConfig, integ: Any, run_id: str,
                actors: tuple[Any, Any], writer: Any, verbose: bool,
                first_pass_always: bool = False) -> None:
    """A pass streams whatever is claimable, retries included (see QueueDatasource);
    another pass runs only for what a pass left claimable (e.g. a retry queued after its
    last read wave ended). Stop when the budget is used, nothing is claimable (no actor pool
    is started for an empty queue), or a pass found nothing to claim (another driver holds
    the rest). Beyond max_attempts+1 passes, work is the next run's."""
    queue, monitor = actors
    for attempt in range(config.queue.max_attempts + 1):
        if not (first_pass_always and attempt == 0) and (
                ray.get(queue.budget_used.remote())
                or not ray.get(queue.claimable_posts.remote())):
            return
        claimed_before = ray.get(queue.get_stats.remote())["claimed_batches"]
        try:
            _one_pass(ray, config, integ, run_id, actors, writer, verbose)
        except Exception as exc:
            cause = true_cause(ray, exc, queue, writer, monitor)
            if cause is exc:
                raise
            raise cause from None
        if ray.get(queue.get_stats.remote())["claimed_batches"] == claimed_before:
            return


def _secrets(params: dict[str, Any]) -> dict[str, str]:
    """The API key a hosted-model classifier names by variable, handed to its actors in
    memory (never in logs, summaries or the config)."""
    name = params.get("api_key_env")
    return {name: os.environ[name]} if isinstance(name, str) and name in os.environ else {}


def _release_claims(ray: Any, queue: Any) -> None:
    try:
        ray.get(queue.release_outstanding.remote(), timeout=30)
    except Exception:  # noqa: BLE001 - the queue actor may be the thing that died
        pass  # its leases then name this (soon dead) process: a rerun reclaims them at once


def _one_pass(ray: Any, config: BackfillConfig, integ: Any, run_id: str,
              actors: tuple[Any, Any], writer: Any, verbose: bool) -> None:
    """Stream every claimable batch through the classifiers into the writer."""
    import ray.data
    from ray.data import ActorPoolStrategy, DataContext

    queue, monitor = actors
    pipe = config.pipeline
    ctx = DataContext.get_current()
    ctx.execution_no_progress_timeout_s = pipe.no_progress_timeout_s
    ctx.target_max_block_size = pipe.read_block_bytes
    ctx.enable_progress_bars = verbose  # the job's own display is the progress bar
    # Whole blocks to the classifier actors (the stage splits them into batch_size calls):
    # with a batch_size here Ray Data would hold a block smaller than it until the read
    # ends, and a later read wave waiting for in-flight retries would wait for ever.
    # map_batches refuses batch_size=None with GPUs, so its unvalidated twin is used.
    map_whole_blocks = whole_block_mapper(ray)
    waves = config.queue.max_attempts if map_whole_blocks else 1
    ds = ray.data.read_datasource(
        QueueDatasource(queue, pipe.read_tasks, pipe.batches_per_claim, waves=waves),
        override_num_blocks=pipe.read_tasks, concurrency=pipe.read_tasks,
        num_cpus=pipe.read_task_num_cpus)
    stage_kwargs = {"classifier_type": integ.classifier.type, "params": integ.classifier.params,
                    "run_id": run_id, "monitor": monitor,
                    "config_hash": integ.classifier.config_hash, "batch_size": integ.batch_size,
                    "secrets": _secrets(integ.classifier.params)}
    map_batches = map_whole_blocks.__get__(ds) if map_whole_blocks else ds.map_batches
    ds = map_batches(
        ClassifierStage, fn_constructor_kwargs=stage_kwargs,
        compute=ActorPoolStrategy(min_size=integ.actors.min, max_size=integ.actors.max),
        batch_size=None if map_whole_blocks else integ.batch_size, batch_format="pyarrow",
        num_cpus=integ.num_cpus, num_gpus=integ.num_gpus)
    # Result blocks go to the writer by reference: the writer's process fetches them from
    # the object store, the driver never deserialises (or even holds) a result row.
    in_flight: list[Any] = []
    for bundle in ds.iter_internal_ref_bundles():
        for entry, part in zip(bundle.blocks, bundle.slices):
            span = None if part is None else (part.start_offset, part.end_offset)
            in_flight.append(writer.consume.remote(entry.ref, span))
            if len(in_flight) >= pipe.writer_max_in_flight:
                done, in_flight = ray.wait(in_flight, num_returns=1)
                ray.get(done)
    ray.get(in_flight)


def whole_block_mapper(ray: Any) -> Callable[..., Any] | None:
    """Ray Data's ``map_batches`` without its validation (None on a Ray without it)."""
    return getattr(ray.data.Dataset, "map_batches_internal", None)


def write_cache(config: BackfillConfig, integration: str, clear_queue: bool = False) -> RunSummary:
    """Stage 4 alone: export the output queue to parquet; optionally clear exported rows."""
    name, _ = config.resolve_integration(integration)
    summary = RunSummary(run_id=new_run_id(name), integration=name, stage="write_cache",
                         started_at=now_iso())
    t0 = time.monotonic()
    out_dir = str((config.output_root / name).resolve())
    store = QueueStore(config.data_dir, name, max_attempts=config.queue.max_attempts)
    try:
        stats = export_output(store, out_dir, config.pipeline.export_rows)
        if clear_queue:
            store.clear_exported()
    finally:
        store.close()
    summary.exported_rows, summary.parquet_files = stats.rows, stats.files
    return summary.finish(config.data_dir, t0, stats.rows, out_dir)
