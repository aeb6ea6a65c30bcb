"""The run summary: one pydantic record per run, saved as ``<data_dir>/runs/<run_id>.json``."""
from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from actors.stats import QueueStats, StageStats, WriterStats
from classifiers.scrub import scrub


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id(integration: str) -> str:
    return f"{integration}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


class RunSummary(BaseModel):
    run_id: str
    integration: str
    stage: str
    started_at: str
    finished_at: str = ""
    duration_s: float = 0.0
    model: str = ""
    classifier: str = ""
    config_hash: str = ""              # names what produced the labels (see README)
    rows_read: int = 0
    skipped_bad_files: int = 0
    enqueued: int = 0
    skipped_known: int = 0             # queued before for this config_hash (labelled or not)
    skipped_duplicate: int = 0         # repeats within this run's input
    skipped_other_version: int = 0     # queued or labelled for another config_hash
    relabelled: int = 0                # other-version posts queued again (--relabel-...)
    adopted_deferred: int = 0          # queued by --classifier-later before a model or file
                                       # config_hash holds was there: now of this config_hash
    rejected_invalid: int = 0
    sampled_out: int = 0       # enqueue: left out by --sample-records
    outside_window: int = 0    # enqueue: older than --backfill-period/--backfill-duration
    feed_days: int = 0         # -r posts_used_in_feeds: feed days read
    missing_feed_days: int = 0  # days of the range without feed files (listed on stderr)
    invalid_by_reason: dict[str, int] = Field(default_factory=dict)
    claimed_batches: int = 0
    claimed: int = 0
    labelled: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    stale_completions: int = 0
    process_deaths: int = 0            # classifier processes killed by a post (isolated)
    stage_us_per_post: float | None = None  # classifier actors' CPU per post outside classify
    reaped_dead_holder_batches: int = 0  # claims of a dead run taken back at start
    export_dead_lettered: int = 0      # output rows that could not be exported
    usage: dict[str, int] = Field(default_factory=dict)  # hosted models: requests, tokens
    estimated_cost: float = 0.0        # from cost_per_1k_*_tokens, when given
    pending_left: int = 0              # still pending after this run (budget, another run)
    leased_elsewhere: int = 0          # held by another (live or remote) run
    leases_expire_in_s: float = 0.0
    incomplete_batches: int = 0
    exported_rows: int = 0
    parquet_files: int = 0
    posts_per_s: float = 0.0
    output_path: str = ""
    label_distribution: dict[str, int] = Field(default_factory=dict)
    pending_other_versions: int = 0    # queued for another config_hash: not this run's
    stopped_claiming: str | None = None  # why the run stopped claiming early, if it did
    role_cpu_s: dict[str, float] = Field(default_factory=dict)  # one-of-a-kind actors; read tasks
    step_s: dict[str, float] = Field(default_factory=dict)  # enqueue: seconds per step
    resolved_config: dict[str, Any] = Field(default_factory=dict)  # paths absolute

    def take(self, queue: QueueStats, stage: StageStats, writer: WriterStats,
             status: Any = None) -> None:
        """The actors' figures (and the queue's state after the run, when known)."""
        self.claimed_batches, self.claimed = queue.claimed_batches, queue.claimed_posts
        self.labelled, self.failed, self.retried = queue.labelled, queue.failed, queue.retried
        self.dead_lettered = queue.dead_lettered
        self.stale_completions = queue.stale_completions
        self.reaped_dead_holder_batches = queue.reaped_dead_holder_batches
        self.export_dead_lettered = writer.export_dead_lettered
        self.stopped_claiming = queue.stopped_claiming
        self.process_deaths = stage.process_deaths
        self.stage_us_per_post = stage.stage_us_per_post
        self.usage = dict(stage.usage)
        self.incomplete_batches = writer.open_batches
        self.exported_rows, self.parquet_files = writer.exported_rows, writer.parquet_files
        self.classifier = writer.provenance.get("classifier", "")
        self.model = writer.provenance.get("model", "")
        self.label_distribution = dict(writer.label_counts)
        self.role_cpu_s = {"queue_actor": round(queue.cpu_s, 3),
                           "writer_actor": round(writer.cpu_s, 3),
                           "stage_reports": round(stage.cpu_s, 3),
                           "read_tasks": round(stage.read_tasks_cpu_s, 3)}
        if status is not None:
            self.pending_left = status.pending_posts
            self.pending_other_versions = status.pending_other_versions
            self.leased_elsewhere = status.processing_posts
            if status.next_lease_expiry:
                self.leases_expire_in_s = round(max(0.0, status.next_lease_expiry
                                                    - time.time()), 1)

    def finish(self, data_dir: str | Path, t0: float, processed: int,
               output_path: str = "") -> "RunSummary":
        """Stamp duration, throughput (``processed`` posts since monotonic ``t0``) and end
        time, then save."""
        self.duration_s = round(time.monotonic() - t0, 3)
        self.posts_per_s = round(processed / self.duration_s, 1) if self.duration_s else 0.0
        self.finished_at = now_iso()
        self.output_path = output_path or self.output_path
        self.save(data_dir)
        return self

    def save(self, data_dir: str | Path) -> Path:
        path = Path(data_dir) / "runs" / f"{self.run_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(scrub(self.model_dump_json(indent=2)))
        tmp.replace(path)
        return path

    def table(self) -> str:
        """A human-readable table of the non-empty figures."""
        rows = [(k, v) for k, v in self.model_dump(
                    exclude={"resolved_config", "role_cpu_s", "step_s"}).items()
                if v not in (0, 0.0, "", {}, None)]
        width = max(len(k) for k, _ in rows)
        lines = [scrub(f"{k.ljust(width)}  {v}") for k, v in rows]
        bar = "-" * max(len(line) for line in lines)
        return "\n".join([bar, *lines, bar])
