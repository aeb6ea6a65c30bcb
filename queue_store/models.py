"""Records that cross the queue store's boundary."""
from __future__ import annotations


from pydantic import BaseModel, ConfigDict, Field


class InvalidPost(BaseModel):
    uri: str | None
    reason: str


class EnqueueSession(BaseModel):
    """One enqueue stage's ledger writes, so it can tell its own repeats from posts queued
    before it (``QueueStore.enqueue(session=...)``)."""

    seqs: set[int] = Field(default_factory=set)


class EnqueueResult(BaseModel):
    enqueued_posts: int = 0
    enqueued_batches: int = 0
    skipped_known: int = 0     # queued before for this config_hash (labelled or not yet)
    skipped_duplicate: int = 0  # queued earlier in the same session (a repeat in the input)
    skipped_other_version: int = 0  # queued (and maybe labelled) for another config_hash
    relabelled: int = 0        # of the enqueued: other-version posts queued again
    invalid: list[InvalidPost] = Field(default_factory=list)
    # Seconds per step: validate (fingerprints included), ledger, encode, insert, commit.
    step_s: dict[str, float] = Field(default_factory=dict)

    @property
    def invalid_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.invalid:
            counts[item.reason] = counts.get(item.reason, 0) + 1
        return counts


class ClaimedBatch(BaseModel):
    """A claim: one leased input batch, as the store hands it out, the QueueActor forwards it
    and a read task turns it into rows (the ``CONTROL`` columns name it from then on). Only
    the holder of ``lease_id`` may complete or fail it. The posts travel as stored
    (``payload``, ``codec.loads_posts`` decodes them); a payload that cannot be decoded is
    its worker's to bury (``QueueStore.bury_undecodable``)."""

    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")
    batch_id: int
    lease_id: str
    attempt: int
    n_posts: int
    config_hash: str
    payload: bytes = Field(repr=False)


class Ack(BaseModel):
    """One claimed batch's answer in a ``complete``: how many of its posts the completion's
    labelled file holds, and ``(post, reason)`` for each of its failed posts."""

    batch_id: int
    lease_id: str
    labelled: int = 0
    failed: list[tuple[dict, str]] = Field(default_factory=list)


class StagedOutput(BaseModel):
    """A completion's labelled rows as parquet written to a staging place, not yet visible
    to readers: one file per post day (``files``: day → the staged file's path or URI),
    published under ``<output>/partition_date=<day>/<stem>.parquet``."""

    stem: str
    files: dict[str, str]
    rows: int


class CompleteResult(BaseModel):
    accepted: bool
    labelled: int = 0
    retried: int = 0
    dead_lettered: int = 0
    # Not accepted: the batches whose lease was lost (the others are still held).
    lost: list[int] = Field(default_factory=list)


class AdoptResult(BaseModel):
    """What ``adopt`` moved to the config_hash that can label it."""
    batches: int = 0
    posts: int = 0
    already_queued: int = 0  # queued for that config_hash too: dropped, labelled once


class ReapResult(BaseModel):
    requeued_batches: int = 0
    dead_lettered_batches: int = 0
    dead_holder_batches: int = 0  # of those, leases of provably dead holders (not expired)


class ClearResult(BaseModel):
    """What ``clear_input`` / ``clear_output`` deleted."""

    input_batches: int = 0
    input_posts: int = 0       # pending batches' posts, forgotten in the ledger
    dead_posts: int = 0        # dead letters, forgotten too
    unexported_rows: int = 0   # output rows never exported: labels lost, posts forgotten
    exported_rows: int = 0     # output rows already in parquet (the files stay)


class CompactResult(BaseModel):
    """Bytes on disk before and after ``QueueStore.compact``."""

    file_bytes_before: int        # the queue file and its WAL
    file_bytes_after: int
    ledger_bytes: int             # the ledger's run files (kept: they are what dedupes)
    full: bool                    # rewritten (VACUUM), or free pages handed back


class DeadLetter(BaseModel):
    id: int
    uri: str | None
    reason: str
    attempt: int
    config_hash: str  # the one the post was queued for


class QueueStatus(BaseModel):
    integration: str
    pending_batches: int = 0
    pending_posts: int = 0
    pending_other_versions: int = 0  # with ``status(config_hash)``: queued for other config_hashes
    processing_batches: int = 0
    processing_posts: int = 0
    next_lease_expiry: float | None = None  # epoch seconds of the soonest expiring lease
    dead_posts: int = 0
    dead_undecodable_rows: int = 0
    output_rows_exported: int = 0
    output_rows_unexported: int = 0
    file_bytes: int = 0    # the queue file and its WAL on disk
    ledger_bytes: int = 0  # the ledger's run files beside it


class StagedRecord(BaseModel):
    """A committed completion's file, not yet published (``QueueStore.staged``)."""

    id: int
    version: str
    output: StagedOutput


class ExportPlan(BaseModel):
    """A chunk of output rows reserved for one parquet write; ``file_stem`` never changes."""

    export_id: int
    file_stem: str
    n_batches: int
