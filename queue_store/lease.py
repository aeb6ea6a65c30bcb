"""The queue core: batches of posts in, leased out, acked or nacked, reaped when their holder is
gone. Every verb that writes is one ``BEGIN IMMEDIATE`` transaction; the sizes and times come
from the job's ``QueueConfig`` (this layer holds no defaults).

- ``enqueue(posts, batch_size, config_hash, relabel=False, session=None)`` — validate; queue
  the posts the ledger has not seen for that config_hash, ``batch_size`` per batch.
- ``remember(uris, config_hash)`` — record posts labelled elsewhere in the ledger, queue
  nothing.
- ``adopt(from_hash, config_hash)`` — pending batches of a provisional config_hash (queued
  before what it names was there) queued for ``config_hash``, as if enqueued for it.
- ``claim(max_batches, lease_seconds, owner, config_hash)`` — lease pending batches of one
  config_hash (reaps first).
- ``extend(leases, lease_seconds)`` — heartbeat: push the expiry of leases still held.
- ``complete(acks, output)`` — fenced ack of batches, all or none: their labelled rows'
  staged parquet recorded, retries (or dead letters at ``max_attempts``), the batches removed.
- ``fail(batch_id, lease_id, reason)`` — fenced nack: the batch back to pending (dead at max).
- ``release(batch_id, lease_id)`` — fenced undo of a claim: pending again, attempt not spent.
- ``bury_undecodable(batch_id, lease_id, reason)`` — fenced: a damaged batch to dead letters.
- ``reap()`` — expired leases, and leases of provably dead holders, back to pending.
- ``requeue_dead(batch_size)`` — dead posts back to pending, fresh attempts.

Fenced: the verb acts only while ``lease_id`` still holds the batch, and says whether it did;
a late ack of a lease that was reaped writes nothing.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from queue_store import codec
from queue_store.fingerprint import fingerprints
from queue_store.lease_holder import LeaseHolder
from queue_store.models import (Ack, AdoptResult, ClaimedBatch, CompleteResult, EnqueueResult,
                                EnqueueSession, InvalidPost, ReapResult, StagedOutput)
from queue_store.queue_file import QueueFile
from queue_store.rows.validation import Validated, as_post_table, split_valid


class LeaseCore(QueueFile):
    # -- producers -------------------------------------------------------------------------
    def enqueue(self, posts: Any, batch_size: int, config_hash: str, relabel: bool = False,
                session: EnqueueSession | None = None) -> EnqueueResult:
        """Validate posts and queue the valid ones for ``config_hash`` in batches of at most
        ``batch_size`` posts. ``posts``: anything ``as_post_table`` takes, or
        ``split_valid``'s result (posts validated once for several integrations' queues).

        A post queued before for ``config_hash`` is skipped, and one queued only for other
        config_hashes too — unless ``relabel``. The ledger's decision and the insert are one
        transaction: concurrent enqueues queue each post once per config_hash. ``session``
        (one per enqueue stage) tells its own repeats from earlier posts."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        clock = _Steps()
        checked = posts if isinstance(posts, Validated) else split_valid(as_post_table(posts))
        result = EnqueueResult(invalid=[InvalidPost(uri=u, reason=r) for u, r in
                                        checked.invalid])
        clock.lap("validate")
        if not checked.valid.num_rows:
            result.step_s = clock.laps
            return result
        with self._transaction() as c:
            valid = self._admit(c, checked, config_hash, relabel, result, session)
            clock.lap("ledger")
            batches = []
            for start in range(0, valid.num_rows, batch_size):
                chunk = valid.slice(start, batch_size)
                batches.append((chunk, {"batch_size": batch_size,
                                        "actual_batch_size": chunk.num_rows}))
            self._insert_batches(c, batches, config_hash)
            clock.lap("insert")
        clock.lap("commit")
        result.enqueued_posts = valid.num_rows
        result.enqueued_batches = len(batches)
        self.merge_ledger()
        clock.lap("ledger")
        result.step_s = clock.laps
        return result

    def remember(self, uris: pa.Array | pa.ChunkedArray, config_hash: str) -> int:
        """Record posts labelled elsewhere (e.g. found in the parquet output when this queue
        file is newer than it) as queued for ``config_hash``, without queueing them; returns
        how many were new to the ledger."""
        uris = pc.unique(uris.drop_null())
        with self._transaction() as c:
            keys, checks = fingerprints(uris)
            vid = self._vid(c, config_hash)
            new = ~self.ledger.lookup(c, keys, checks, vid).same
            self.ledger.add(c, keys[new], checks[new], vid, self._next_seq(c))
        self.merge_ledger()
        return int(new.sum())

    def adopt(self, from_hash: str, config_hash: str) -> AdoptResult:
        """Queue the pending batches of ``from_hash`` for ``config_hash`` instead, as an
        enqueue for it would: the ledger records their posts for ``config_hash``, and a post
        it already holds for ``config_hash`` (queued for both) is dropped, so it is labelled
        once. For ``--classifier-later``: ``from_hash`` was computed before a model or file
        the config names was there. One transaction; a batch leased meanwhile stays (no run
        labels ``from_hash``: its classifier could not be built)."""
        result = AdoptResult()
        t = self.tables["input"]
        pending = f"SELECT id, payload, metadata FROM {t} WHERE status = 'pending' AND version = ?"
        if self.conn.execute(f"{pending} LIMIT 1", (from_hash,)).fetchone() is None:
            return result  # nothing to adopt: no write transaction
        with self._transaction() as c:
            vid, seq = self._vid(c, config_hash), self._next_seq(c)
            for page in self._pages(c, pending, (from_hash,)):
                keys, checks = [], []
                for batch_id, payload, metadata in page:
                    kept = self._adopt_batch(c, batch_id, payload, metadata, vid,
                                             config_hash, result)
                    if kept is not None:
                        keys.append(kept[0])
                        checks.append(kept[1])
                if keys:  # one ledger run per page
                    self.ledger.add(c, np.concatenate(keys), np.concatenate(checks), vid, seq)
        self.merge_ledger()
        return result

    def _adopt_batch(self, c: Any, batch_id: int, payload: bytes, metadata: str, vid: int,
                     config_hash: str, result: AdoptResult
                     ) -> tuple[np.ndarray, np.ndarray] | None:
        """One batch of ``adopt``: re-stamped, less the posts already queued for
        ``config_hash``; returns the fingerprints of the posts it keeps (None: none, or a
        batch that cannot be decoded — re-stamped as it is, for the run to dead-letter)."""
        t = self.tables["input"]
        try:
            posts = codec.loads_posts(payload)
        except codec.PayloadError:
            c.execute(f"UPDATE {t} SET version = ? WHERE id = ?", (config_hash, batch_id))
            result.batches += 1
            return None
        keys, checks = fingerprints(posts.column("uri").cast(pa.string()))
        known = self.ledger.lookup(c, keys, checks, vid).same
        result.already_queued += int(known.sum())
        if known.all():
            self._delete(c, "input", batch_id)
            return None
        if known.any():
            posts = pa.Table.from_batches([posts.filter(pa.array(~known))])
            meta = {**codec.loads(metadata), "actual_batch_size": posts.num_rows}
            c.execute(f"UPDATE {t} SET version = ?, payload = ?, metadata = ?, n_posts = ? "
                      "WHERE id = ?", (config_hash, codec.dumps_posts(posts), codec.dumps(meta),
                                       posts.num_rows, batch_id))
        else:
            c.execute(f"UPDATE {t} SET version = ? WHERE id = ?", (config_hash, batch_id))
        result.batches += 1
        result.posts += posts.num_rows
        return keys[~known], checks[~known]

    def merge_ledger(self) -> int:
        """Merge the ledger's runs while a tier has ``FANOUT`` of them (outside any
        transaction; each merged run replaces its sources in a short one). Returns merges."""
        merges = 0
        while True:
            sources = self.ledger.merge_candidates(self.conn)
            if not sources:
                return merges
            runs = [r for r in self.ledger.runs(self.conn) if r.name in sources]
            tmp, n = self.ledger.write_merged(runs)
            with self._transaction() as c:
                swapped = self.ledger.swap_in(c, tmp, n, sources)
            if not swapped:  # another process merged them first
                tmp.unlink(missing_ok=True)
                return merges
            self.ledger.unlink_runs(sources)
            merges += 1

    def _admit(self, c: Any, checked: Validated, config_hash: str, relabel: bool,
               result: EnqueueResult, session: EnqueueSession | None) -> pa.Table:
        """The posts to queue (the rest counted in ``result``), recorded in the ledger."""
        valid, keys, checks = checked.valid, checked.keys, checked.checks
        vid = self._vid(c, config_hash)
        hits = self.ledger.lookup(c, keys, checks, vid)
        mine = np.isin(hits.same_seq, list(session.seqs)) if session else np.zeros(
            len(keys), bool)
        result.skipped_duplicate += int((hits.same & mine).sum())
        result.skipped_known += int((hits.same & ~mine).sum())
        elsewhere = hits.other & ~hits.same
        if relabel:
            result.relabelled += int(elsewhere.sum())
            take = ~hits.same
        else:
            result.skipped_other_version += int(elsewhere.sum())
            take = ~(hits.same | hits.other)
        seq = self._next_seq(c)
        self.ledger.add(c, keys[take], checks[take], vid, seq)
        if session is not None:
            session.seqs.add(seq)
        return valid if take.all() else valid.filter(pa.array(take))

    # -- consumers -------------------------------------------------------------------------
    def claim(self, max_batches: int, lease_seconds: float, owner: str, config_hash: str
              ) -> list[ClaimedBatch]:
        """Lease up to ``max_batches`` pending batches queued for ``config_hash`` (a run
        labels only what was queued for its own) to ``owner`` (``LeaseHolder``). Payloads are
        handed on as stored."""
        now = self.clock()
        lease_id = uuid.uuid4().hex
        t = self.tables["input"]
        with self._transaction() as c:
            reaped = self._reap(c, now)
            rows = c.execute(
                f"UPDATE {t} SET status = 'processing', lease_id = ?, lease_owner = ?, "
                "lease_expires = ?, attempt = attempt + 1 "
                f"WHERE id IN (SELECT id FROM {t} WHERE status = 'pending' AND version = ? "
                "ORDER BY id LIMIT ?) RETURNING id, payload, attempt, n_posts",
                (lease_id, owner, now + lease_seconds, config_hash, max_batches)).fetchall()
        self._count_reaped(reaped)
        return [ClaimedBatch.model_construct(batch_id=batch_id, lease_id=lease_id,
                                             attempt=attempt, n_posts=n_posts,
                                             config_hash=config_hash, payload=payload)
                for batch_id, payload, attempt, n_posts in sorted(rows)]

    def extend(self, leases: Sequence[tuple[int, str]], lease_seconds: float) -> int:
        """Push the expiry of each (batch_id, lease_id) still held; returns how many were."""
        if not leases:
            return 0
        expires = self.clock() + lease_seconds
        with self._transaction() as c:
            before = c.total_changes
            c.executemany(f"UPDATE {self.tables['input']} SET lease_expires = ? "
                          "WHERE id = ? AND lease_id = ? AND status = 'processing'",
                          [(expires, b, lease) for b, lease in leases])
            return c.total_changes - before

    def complete(self, acks: Sequence[Ack], output: StagedOutput | None = None
                 ) -> CompleteResult:
        """Fenced ack of claimed batches, all or none, in one transaction: ``output`` is the
        staged parquet holding their labelled rows (``staging.stage``; None: nothing was
        labelled), each ack says how many of its batch's posts the file holds and which
        failed. Every batch must be accounted for whole (its stored ``n_posts``), and the
        file must hold exactly the acks' labelled posts.

        The file is recorded for publishing (``staging.publish``), failed posts go back as a
        retry batch (or to dead letters at ``max_attempts``), the batches are removed.
        When a lease no longer holds one of the batches, nothing is written: ``accepted`` is
        False and ``lost`` names those batches."""
        labelled = sum(a.labelled for a in acks)
        if labelled != (output.rows if output else 0):
            raise ValueError(f"complete: the acks account for {labelled} labelled posts, the "
                             f"staged file holds {output.rows if output else 0}")
        t = self.tables
        with self._transaction() as c:
            held = {a.batch_id: self._held(c, a.batch_id, a.lease_id, "attempt, n_posts, version")
                    for a in acks}
            lost = [b for b, row in held.items() if row is None]
            if lost or len(held) != len(acks):
                return CompleteResult(accepted=False, lost=lost)
            result = CompleteResult(accepted=True, labelled=labelled)
            versions = {row[2] for row in held.values()}
            if len(versions) > 1:
                raise ValueError(f"complete: the batches were queued for {len(versions)} "
                                 "config_hashes; one completion labels one")
            for a in acks:
                attempt, n_posts, config_hash = held[a.batch_id]
                if a.labelled + len(a.failed) != n_posts:
                    raise ValueError(f"complete({a.batch_id}) must account for each of its "
                                     f"{n_posts} posts once: got {a.labelled} labelled and "
                                     f"{len(a.failed)} failed")
                if len({post["uri"] for post, _ in a.failed}) != len(a.failed):
                    raise ValueError(f"complete({a.batch_id}) names a post twice")
                retried, dead = self._retry_or_bury(c, a.batch_id, list(a.failed), attempt,
                                                    config_hash)
                result.retried += retried
                result.dead_lettered += dead
                self._delete(c, "input", a.batch_id)
            if output is not None and output.rows:
                c.execute(f"INSERT INTO {t['files']} (version, state, stem, files, n_rows, "
                          "created_at) VALUES (?, 'staged', ?, ?, ?, ?)",
                          (versions.pop(), output.stem, codec.dumps(output.files), output.rows,
                           self.clock()))
        return result

    def fail(self, batch_id: int, lease_id: str, reason: str) -> bool:
        """Fenced nack of a whole batch: back to pending, or dead once max_attempts is used."""
        def nack(c: Any, payload: bytes, attempt: int, config_hash: str) -> None:
            if attempt < self.max_attempts:
                self._unlease(c, batch_id)
            else:
                self._bury_batch(c, batch_id, payload, reason, attempt, config_hash)
        return self._if_held(batch_id, lease_id, nack)

    def release(self, batch_id: int, lease_id: str) -> bool:
        """Fenced undo of a claim that was never worked on: pending again, attempt not spent."""
        with self._transaction() as c:
            return self._unlease(c, batch_id, lease_id, refund=True)

    def bury_undecodable(self, batch_id: int, lease_id: str, reason: str) -> bool:
        """Fenced: a claimed batch whose payload cannot be decoded goes to dead letters."""
        def bury(c: Any, payload: bytes, attempt: int, config_hash: str) -> None:
            self._dead_letter_raw(c, batch_id, payload, reason, attempt, config_hash)
        return self._if_held(batch_id, lease_id, bury)

    def _if_held(self, batch_id: int, lease_id: str,
                 act: Callable[[Any, bytes, int, str], None]) -> bool:
        """``act(cursor, payload, attempt, config_hash)`` on the batch if ``lease_id`` still
        holds it (True), else nothing (False: the lease was lost)."""
        with self._transaction() as c:
            held = self._held(c, batch_id, lease_id, "payload, attempt, version")
            if held is None:
                return False
            act(c, *held)
        return True

    def reap(self) -> ReapResult:
        """Return expired leases, and those of provably dead holders, to pending (or dead
        letters once max_attempts is used). ``claim`` reaps the same way first; ``reaped``
        sums what every committed reap of this open store took back."""
        with self._transaction() as c:
            result = self._reap(c, self.clock())
        self._count_reaped(result)
        return result

    def _count_reaped(self, result: ReapResult) -> None:
        for field in ReapResult.model_fields:
            setattr(self.reaped, field, getattr(self.reaped, field) + getattr(result, field))

    def _reap(self, c: Any, now: float) -> ReapResult:
        expired = self._leased(c, "lease_expires < ?", (now,))
        result = ReapResult()
        # Leases of runs that provably died on this host: no need to wait for their expiry.
        holders = c.execute(f"SELECT DISTINCT lease_owner FROM {self.tables['input']} WHERE "
                            "status = 'processing' AND lease_expires >= ?", (now,)).fetchall()
        for (owner,) in holders:
            holder = LeaseHolder.parse(owner)
            if holder is not None and holder.provably_dead():
                rows = self._leased(c, "lease_owner = ? AND lease_expires >= ?", (owner, now))
                result.dead_holder_batches += len(rows)
                expired.extend(rows)
        for batch_id, payload, attempt, config_hash in expired:
            if attempt < self.max_attempts:
                self._unlease(c, batch_id)
                result.requeued_batches += 1
                continue
            self._bury_batch(c, batch_id, payload, f"lease expired on attempt {attempt} "
                             "(worker lost each time)", attempt, config_hash)
            result.dead_lettered_batches += 1
        return result

    def _retry_or_bury(self, c: Any, batch_id: int, failed: list[tuple[dict, str]],
                       attempt: int, config_hash: str) -> tuple[int, int]:
        if not failed:
            return 0, 0
        if attempt >= self.max_attempts:
            self._insert_dead(c, failed, attempt, config_hash, batch_id)
            return 0, len(failed)
        posts = [p for p, _ in failed]
        meta = {"retry_of": batch_id, "last_reasons": sorted({r for _, r in failed})[:5],
                "batch_size": len(posts), "actual_batch_size": len(posts)}
        self._insert_batches(c, [(codec.posts_table(posts), meta)], config_hash, attempt)
        return len(failed), 0

    def requeue_dead(self, batch_size: int) -> int:
        """Move decodable dead posts back to pending with a fresh attempt count, each for the
        config_hash it was queued for (one transaction per batch)."""
        moved = 0
        t = self.tables
        while True:
            with self._transaction() as c:
                first = c.execute(f"SELECT version FROM {t['dead']} WHERE decodable = 1 "
                                  "ORDER BY id LIMIT 1").fetchone()
                if first is None:
                    return moved
                rows = c.execute(f"SELECT id, payload FROM {t['dead']} WHERE decodable = 1 "
                                 "AND version = ? ORDER BY id LIMIT ?",
                                 (first[0], batch_size)).fetchall()
                posts = codec.posts_table([codec.loads(p) for _, p in rows])
                self._insert_batches(c, [(posts, {"requeued_from_dead": True,
                                                  "batch_size": batch_size,
                                                  "actual_batch_size": posts.num_rows})],
                                     first[0])
                c.executemany(f"DELETE FROM {t['dead']} WHERE id = ?", [(i,) for i, _ in rows])
                moved += len(rows)


class _Steps:
    """Seconds spent per named step (laps of a ``perf_counter`` clock)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.laps[step] = self.laps.get(step, 0.0) + now - self._last
        self._last = now
