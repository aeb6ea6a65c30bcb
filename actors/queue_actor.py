"""QueueActor: claims, leases and completions of an integration's queue during a run.

Claims are serialised because a (non-concurrent) actor runs one method at a time; it claims
only batches queued for this run's ``config_hash``. It also keeps the classifier stage's
reports (``StageReports``, on a thread of their own). A heartbeat thread extends every
lease this actor handed out, through its own SQLite connection, so a live run's claims never
expire while a dead run's expire within ``lease_seconds``. The heartbeat survives a locked or
failing queue file (it retries at its next beat); if it cannot renew for so long that leases
may have expired, the actor stops claiming and says why (the run then ends, and a rerun goes
on: completions of leases lost meanwhile are fenced, never duplicated).
"""
from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

from actors.stage_reports import StageReports
from actors.stats import QueueStats
from queue_store import ClaimedBatch, QueueStore
from queue_store.models import Ack, StagedOutput
from queue_store.schema import QueueFileError

# The heartbeat gives up on one renewal after a quarter of a lease (and tries again at its
# next beat); past SAFE_FRACTION of a lease without a renewal, claiming stops.
SAFE_FRACTION = 0.75
# A read task that finds nothing pending reaps (a write transaction) at most this often.
REAP_EVERY_S = 1.0


class QueueActor(StageReports):
    """``ray.remote(**stage_reports.OPTIONS)(QueueActor)``: one per integration's run."""

    def __init__(self, data_dir: str, integration: str, max_attempts: int,
                 lease_seconds: float, owner: str, config_hash: str,
                 max_records: int | None = None, feeding: bool = False) -> None:
        super().__init__()
        self.store = QueueStore(data_dir, integration, max_attempts=max_attempts)
        self.lease_seconds = lease_seconds
        self.owner = owner
        self.config_hash = config_hash
        self.max_records = max_records
        self.feeding = feeding  # the same command's enqueue is still running
        self.outstanding: dict[int, str] = {}
        self.stats = QueueStats()
        self._reaped_at = -REAP_EVERY_S
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, args=(data_dir, integration,
                                                                    max_attempts), daemon=True)
        self._heartbeat.start()
        self.cpu_at_start = time.process_time()  # after imports and set-up

    # -- read side -------------------------------------------------------------------------
    def next_batches(self, max_batches: int) -> list[ClaimedBatch]:
        """Claim for a read task: the claims as the store made them, posts as stored (an
        Arrow record batch; checking it is the read task's job, off this serial actor). An
        empty list means nothing is claimable now (stop)."""
        if self.budget_used() or self.stats.stopped_claiming:
            return []
        batches = self.store.claim(max_batches, self.lease_seconds, self.owner,
                                   self.config_hash)
        if self.max_records is not None:
            batches = self._trim_to_budget(batches)
        with self._lock:
            for b in batches:
                self.outstanding[b.batch_id] = b.lease_id
        self.stats.claimed_batches += len(batches)
        self.stats.claimed_posts += sum(b.n_posts for b in batches)
        return batches

    def work_state(self, wait_for_retries: bool = True) -> str:
        """For a read task before its first claim: ``claim`` (something is pending),
        ``wait`` (the enqueue running beside the run will queue more, or — with
        ``wait_for_retries`` — batches of this run are in flight, whose failures may come
        back as retries) or ``done``."""
        if self.stats.stopped_claiming or self.budget_used():
            return "done"
        if self.store.has_pending(self.config_hash) or self._take_back_dead_claims():
            return "claim"
        if self.feeding:
            return "wait"
        with self._lock:
            return "wait" if wait_for_retries and self.outstanding else "done"

    def close_feed(self) -> None:
        """The enqueue running alongside has ended: read tasks stop waiting for it."""
        self.feeding = False

    def stop_claiming(self, reason: str) -> None:
        """Hand out nothing more (Ctrl-C, a fatal error): read tasks end, work in flight
        finishes."""
        self.stats.stopped_claiming = self.stats.stopped_claiming or reason

    def bury_undecodable(self, batch_id: int, lease_id: str, reason: str) -> bool:
        """A read task could not decode a claimed row: dead letters (fenced by the lease)."""
        with self._lock:
            if self.outstanding.get(batch_id) == lease_id:
                del self.outstanding[batch_id]
        buried = self.store.bury_undecodable(batch_id, lease_id, reason)
        self.stats.undecodable_rows += int(buried)
        return buried

    def budget_used(self) -> bool:
        return self.max_records is not None and self.stats.claimed_posts >= self.max_records

    def claimable_posts(self) -> int:
        """Posts a claim could take now: pending ones of this config_hash, after reaping expired
        leases and the leases of provably dead runs."""
        self._take_back_dead_claims(force=True)
        return self.store.status(self.config_hash).pending_posts

    def _take_back_dead_claims(self, force: bool = False) -> bool:
        """Reap expired leases and those of provably dead runs (a crashed run that held every
        batch leaves nothing pending: claiming, which reaps, would never start); at most once
        every ``REAP_EVERY_S`` unless ``force``. Returns whether a batch came back."""
        now = time.monotonic()
        if not force and now - self._reaped_at < REAP_EVERY_S:
            return False
        self._reaped_at = now
        return self.store.reap().requeued_batches > 0

    def queue_status(self) -> Any:
        return self.store.status(self.config_hash)

    def release_outstanding(self) -> int:
        """Fenced: every lease this run still holds back to pending (attempt not spent), so a
        rerun can start at once after Ctrl-C or a failed run."""
        with self._lock:
            leases, self.outstanding = list(self.outstanding.items()), {}
        return sum(self.store.release(b, lease) for b, lease in leases)

    def _trim_to_budget(self, batches: list[ClaimedBatch]) -> list[ClaimedBatch]:
        """Whole batches only, never past max_records (a first batch above it still runs)."""
        kept, total = [], self.stats.claimed_posts
        for b in batches:
            if total > 0 and total + b.n_posts > self.max_records:
                self.store.release(b.batch_id, b.lease_id)
                continue
            kept.append(b)
            total += b.n_posts
        if len(kept) < len(batches):
            self.max_records = total  # budget used up: later calls report done
        return kept

    # -- write side ------------------------------------------------------------------------
    def complete(self, acks: list[Ack], output: StagedOutput | None) -> dict[str, Any]:
        """Fenced ack of the batches of one or more claims and the record of their labelled
        file, all or none (``QueueStore.complete``)."""
        result = self.store.complete(acks, output)
        with self._lock:
            for a in acks:
                if result.accepted or a.batch_id in result.lost:
                    if self.outstanding.get(a.batch_id) == a.lease_id:
                        del self.outstanding[a.batch_id]
        if not result.accepted:
            self.stats.stale_completions += len(result.lost)
        else:
            self.stats.labelled += result.labelled
            self.stats.failed += sum(len(a.failed) for a in acks)
            self.stats.retried += result.retried
            self.stats.dead_lettered += result.dead_lettered
        return result.model_dump()

    # -- lifecycle -------------------------------------------------------------------------
    def get_stats(self) -> QueueStats:
        return self.stats.model_copy(update={
            "in_flight_batches": len(self.outstanding),
            "reaped_dead_holder_batches": self.store.reaped.dead_holder_batches,
            "remaining_posts": self.store.remaining_posts(self.config_hash),
            "cpu_s": time.process_time() - self.cpu_at_start})

    def stop(self) -> QueueStats:
        self._stop.set()
        self._heartbeat.join(timeout=5)
        return self.get_stats()

    def _beat(self, data_dir: str, integration: str, max_attempts: int) -> None:
        """Extend this run's leases every third of a lease. A renewal that fails (the file
        locked by another process, a disk error) is retried at the next beat; once no renewal
        has succeeded for ``SAFE_FRACTION`` of a lease, claiming stops."""
        interval = max(self.lease_seconds / 3, 0.05)
        store: QueueStore | None = None
        renewed = time.monotonic()
        try:
            while not self._stop.wait(interval):
                with self._lock:
                    leases = list(self.outstanding.items())
                try:
                    if store is None:  # opened here: opening may meet the lock too
                        store = QueueStore(data_dir, integration, max_attempts=max_attempts,
                                           busy_timeout_s=max(self.lease_seconds / 4, 0.05))
                    if leases:
                        store.extend(leases, self.lease_seconds)
                        self.stats.heartbeats += 1
                    renewed = time.monotonic()
                except (sqlite3.Error, QueueFileError) as exc:
                    late = time.monotonic() - renewed
                    if late > self.lease_seconds * SAFE_FRACTION:
                        self.stop_claiming(
                            f"this run's leases could not be renewed for {late:.0f} s "
                            f"(lease_seconds {self.lease_seconds:g}): {exc}; it stopped "
                            "claiming so another run may take over — rerun to go on, nothing "
                            "is lost or duplicated")
        finally:
            if store is not None:
                store.close()
