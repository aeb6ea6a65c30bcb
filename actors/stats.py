"""What the pipeline's actors report to the driver, as typed records (no Ray import).

The driver's run summary takes these whole; the progress display reads them while the run
goes on.
"""
from __future__ import annotations

from pydantic import BaseModel, Field


class QueueStats(BaseModel):
    """The QueueActor's counts for this run (claims, completions, leases)."""

    claimed_batches: int = 0
    claimed_posts: int = 0
    labelled: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    stale_completions: int = 0
    heartbeats: int = 0
    reaped_dead_holder_batches: int = 0
    undecodable_rows: int = 0
    in_flight_batches: int = 0
    remaining_posts: int = 0  # queued for this version and not done: pending or leased
    cpu_s: float = 0.0  # the actor's CPU time since it was set up
    # Why this run stopped claiming early (its leases could not be renewed in time, or it
    # was told to stop), None while it claims normally.
    stopped_claiming: str | None = None


class WriterStats(BaseModel):
    """The WriterActor's counts: result rows in, batches completed, parquet out."""

    result_rows: int = 0
    completed_batches: int = 0
    stale_batches: int = 0
    exported_rows: int = 0
    parquet_files: int = 0
    export_dead_lettered: int = 0  # output rows that could not be exported (dead letters)
    open_batches: int = 0
    cpu_s: float = 0.0  # the actor's CPU time since it was set up
    provenance: dict[str, str] = Field(default_factory=dict)
    label_counts: dict[str, int] = Field(default_factory=dict)


class Fatal(BaseModel):
    """An error that stops the run at once (nothing is retried): its one line, its exit code."""

    message: str
    exit_code: int = 2


class StageStats(BaseModel):
    """What the classifier actors reported to the StageReports."""

    fatal: Fatal | None = None
    process_deaths: int = 0
    usage: dict[str, int] = Field(default_factory=dict)
    stage_us_per_post: float | None = None  # CPU per post outside ``classify``
    classified: int = 0           # posts through ``classify`` so far (every call reported)
    actors_loading: int = 0       # classifier actors building their classifier (model load)
    actors_ready: int = 0
    waiting_on: dict[str, str] = Field(default_factory=dict)  # e.g. rate_limit, last_error
    cpu_s: float = 0.0  # CPU time of the QueueActor thread serving the stage's reports
    read_tasks_cpu_s: float = 0.0  # the read tasks' own, summed as each ended
