"""The enqueue ledger: every (post, version) ever queued for an integration, so "is this post
new?" is decided inside the enqueue transaction and concurrent enqueues queue each post once
per version.

An **entry** is a post's fingerprint (``fingerprint.py``: ``key`` orders the entries, ``check``
tells apart two uris whose keys collide — they make two entries), the version it was queued
for (a small id from the queue file's ``versions`` table) and ``seq``, the ledger write that
recorded it (so an enqueue tells its own repeats from posts queued before it). A *forget*
entry (the version id with ``FORGET_BIT`` set) cancels the post's entries of that one version
written earlier: clearing a queue forgets its posts under the versions they were queued for,
so a later enqueue of that version queues them again — and their labels under any other
version stay known.

Each run file carries a checksum (XXH3-128 over its columns), verified when a process first
maps it: a damaged, emptied, truncated or missing run raises ``LedgerDamaged`` naming the file,
before anything is looked up or queued, and ``QueueStore.rebuild_ledger`` (``--rebuild-ledger``)
writes the ledger anew from what the queue file and the parquet output hold.

Entries live in immutable **run** files sorted by key, in ``<integration>.ledger/`` beside the
queue file, memory-mapped for lookups (their pages are the file system's cache, not a
process's own memory). An enqueue transaction looks its posts up in every run (one vectorised
binary search per run), writes the new ones as one new run, flushes it to disk and names it in
the queue file's ``ledger_runs`` table — in that same transaction. A run file that no
committed transaction names (a crash, a rollback) is ignored and deleted by a later writer.
Runs are merged size-tiered (``FANOUT`` runs of one tier make one run of the next) outside any
transaction, in bounded memory; the merged run replaces its sources in one short transaction,
so a lookup costs a few binary searches per post whatever the ledger's size, and no write ever
touches earlier entries. (An SQLite index keyed by uri — or by fingerprint — rewrote most of
its pages at every commit once the ledger outgrew the cache: 26 of the 48 s of a 1M-post
enqueue.)

Functions of an open queue file and its folder; ``QueueStore`` calls them.
"""
from __future__ import annotations

import errno
import math
import os
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import xxhash

from queue_store.schema import QueueFileError

MAGIC = b"BFLEDG02"
OLD_MAGIC = b"BFLEDG01"  # before checksums and per-version forgets
HEADER = 32  # magic, entry count, checksum (16 bytes)
WIDTHS = (8, 8, 4, 2)  # key, check, seq, vid: each column a region of the file, in order
DTYPES = ("<i8", "<i8", "<u4", "<u2")
FANOUT = 4  # runs of one tier merged into one
# A *forget* entry's version id is the forgotten version's with this bit set: the post's
# earlier entries of that version no longer count, as of its ledger write.
FORGET_BIT = 0x8000
MAX_VID = FORGET_BIT - 2  # version ids stay below the bit (and below its all-ones pattern)
TIER_BASE = 4096  # entries of a tier-0 run (smaller runs are tier 0 too)
MERGE_CHUNK = 1 << 20  # entries merged at a time: bounds a merge's memory
STALE_TMP_S = 3600.0  # an unfinished merge file older than this is abandoned


@dataclass
class Run:
    """One immutable run file, mapped read-only."""

    name: str
    n: int
    keys: np.ndarray
    checks: np.ndarray
    seqs: np.ndarray
    vids: np.ndarray

    @classmethod
    def open(cls, path: Path) -> "Run":
        """Map a run file and verify it (size, header, checksum); ``LedgerDamaged`` if not."""
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise LedgerDamaged(path, "the file is missing") from None
        if size < HEADER:
            raise LedgerDamaged(path, f"the file is {'empty' if not size else 'truncated'} "
                                f"({size} bytes)")
        buf = np.memmap(path, dtype=np.uint8, mode="r")
        magic = bytes(buf[:8])
        if magic == OLD_MAGIC:
            raise LedgerDamaged(path, "it was written by an earlier version of this tool "
                                "(no checksum)", old=True)
        if magic != MAGIC:
            raise LedgerDamaged(path, "bad header")
        n = int(buf[8:16].view("<i8")[0])
        if n < 0 or len(buf) != _file_size(n):
            raise LedgerDamaged(path, f"size {len(buf)} bytes, its header says "
                                f"{_file_size(max(n, 0))}")
        columns, at = [], HEADER
        for width, dtype in zip(WIDTHS, DTYPES):
            columns.append(buf[at:at + width * n].view(dtype))
            at += width * n
        if _checksum([memoryview(col.view(np.uint8)) for col in columns]) != bytes(buf[16:32]):
            raise LedgerDamaged(path, "its checksum does not match its entries")
        return cls(path.name, n, *columns)


class LedgerDamaged(QueueFileError):
    """A ledger run file is missing or damaged: the message names it and the way out."""

    def __init__(self, path: Path, why: str, old: bool = False) -> None:
        super().__init__(
            f"ledger run {path} is {'unusable' if old else 'damaged'}: {why}. Nothing was "
            "queued; the ledger can be rebuilt from the queue file and the parquet output: "
            "--rebuild-ledger (with the same --config and -i)")
        self.path, self.why, self.old = path, why, old


def _checksum(regions: list[Any]) -> bytes:
    """XXH3-128 of the four column regions' own XXH3-128 digests (each region is written in
    order, also by a merge that fills the regions chunk by chunk)."""
    return xxhash.xxh3_128_digest(b"".join(xxhash.xxh3_128_digest(r) for r in regions))


def _file_size(n: int) -> int:
    return HEADER + 22 * n


def _header(n: int, digest: bytes) -> bytes:
    return MAGIC + np.int64(n).astype("<i8").tobytes() + digest


def _write_run(path: Path, keys: np.ndarray, checks: np.ndarray, seqs: np.ndarray,
               vids: np.ndarray) -> None:
    """Write a run (already sorted by key) and flush it to disk before anyone names it."""
    columns = [np.ascontiguousarray(arr, dtype=dtype).tobytes()
               for arr, dtype in zip((keys, checks, seqs, vids), DTYPES)]
    with _writing(path):
        with open(path, "wb") as fh:
            fh.write(_header(len(keys), _checksum(columns)))
            for column in columns:
                fh.write(column)
            fh.flush()
            os.fsync(fh.fileno())


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """A failed write of a ledger file (a full disk, a read-only folder) names the file;
    the half-written file is removed (no committed transaction names it)."""
    try:
        yield
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise LedgerWriteError(path, exc) from None


class LedgerWriteError(QueueFileError):
    """A ledger file could not be written (the transaction that would name it rolls back)."""

    def __init__(self, path: Path, exc: OSError) -> None:
        why = (f"the disk is full; free space on {path.parent.parent} and rerun"
               if exc.errno == errno.ENOSPC else
               "check the disk and the permissions under data_dir and rerun")
        super().__init__(f"ledger file {path} could not be written ({exc.strerror or exc}): "
                         f"{why} (what was committed before stays: nothing is lost)")
        self.path = path


@dataclass
class Hits:
    """What the ledger knows of each looked-up post."""

    same: np.ndarray           # queued before for this version
    same_seq: np.ndarray       # the ledger write that queued it (-1: none)
    other: np.ndarray          # queued for another version


@dataclass
class Ledger:
    """The run files of one queue (``folder``) and a cache of their mappings."""

    folder: Path
    runs_table: str
    _open: dict[str, Run] = field(default_factory=dict)

    # -- reading -------------------------------------------------------------------------
    def runs(self, c: Any) -> list[Run]:
        """The runs the queue file names now (in ``c``'s snapshot)."""
        names = [(n, k) for n, k in c.execute(f"SELECT name, n FROM {self.runs_table}")]
        live = {name for name, _ in names}
        for stale in set(self._open) - live:
            del self._open[stale]
        out = []
        for name, _ in names:
            run = self._open.get(name)
            if run is None:
                run = self._open[name] = Run.open(self.folder / name)
            out.append(run)
        return out

    def lookup(self, c: Any, keys: np.ndarray, checks: np.ndarray, vid: int) -> Hits:
        """Which posts (by fingerprint) the ledger holds for ``vid`` and for other versions."""
        n = len(keys)
        hits = Hits(np.zeros(n, bool), np.full(n, -1, np.int64), np.zeros(n, bool))
        if not n:
            return hits
        order = np.argsort(keys, kind="stable")
        sk, sc = keys[order], checks[order]
        found = [(order[pos], vids.astype(np.int64), seqs.astype(np.int64))
                 for run in self.runs(c) for pos, vids, seqs in _matches(run, sk, sc)]
        if not found:
            return hits
        posts, vids, seqs = (np.concatenate(x) for x in zip(*found))
        forget = (vids & FORGET_BIT) != 0
        # The latest forget of each (post, version): entries of that pair written before it
        # no longer count.
        pair = posts * FORGET_BIT + (vids & (FORGET_BIT - 1))
        latest = np.full(len(pair), -1, np.int64)
        if forget.any():
            fpair, fseq = pair[forget], seqs[forget]
            order = np.lexsort((fseq, fpair))
            fpair, fseq = fpair[order], fseq[order]
            last = np.r_[fpair[1:] != fpair[:-1], True]  # the largest seq of each pair
            upair, useq = fpair[last], fseq[last]
            at = np.minimum(np.searchsorted(upair, pair), len(upair) - 1)
            latest = np.where(upair[at] == pair, useq[at], -1)
        live = ~forget & (seqs > latest)
        mine = live & (vids == vid)
        hits.same[posts[mine]] = True
        np.maximum.at(hits.same_seq, posts[mine], seqs[mine])
        hits.other[posts[live & (vids != vid)]] = True
        return hits

    def verify(self, c: Any) -> int:
        """Open (and so verify) every run the queue file names; ``LedgerDamaged`` names the
        first that is missing or damaged. Returns the entries."""
        return sum(run.n for run in self.runs(c))

    # -- writing -------------------------------------------------------------------------
    def add(self, c: Any, keys: np.ndarray, checks: np.ndarray, vid: int, seq: int) -> None:
        """Record posts for ``vid`` as ledger write ``seq``: one new run file, flushed, then
        named in the caller's transaction (which commits both or neither)."""
        if not len(keys):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self._collect_garbage(c)
        order = np.argsort(keys, kind="stable")
        name = f"run-{seq:010d}-{uuid.uuid4().hex[:8]}.led"
        _write_run(self.folder / name, keys[order], checks[order],
                   np.full(len(keys), seq, np.uint32), np.full(len(keys), vid, np.uint16))
        c.execute(f"INSERT INTO {self.runs_table} (name, n) VALUES (?, ?)", (name, len(keys)))

    def forget(self, c: Any, keys: np.ndarray, checks: np.ndarray, vid: int, seq: int) -> None:
        """Cancel these posts' entries of version ``vid`` written earlier, in the caller's
        transaction: a later enqueue of that version queues them again."""
        self.add(c, keys, checks, vid | FORGET_BIT, seq)

    def _collect_garbage(self, c: Any) -> None:
        """Run files no committed transaction names (a crash or rollback left them): only a
        writer may delete them, as only a writer adds them. Unfinished merges (``.tmp``) are
        left alone unless abandoned."""
        named = {name for (name,) in c.execute(f"SELECT name FROM {self.runs_table}")}
        now = time.time()
        for path in self.folder.iterdir():
            if path.name in named:
                continue
            try:
                if path.suffix == ".tmp" and now - path.stat().st_mtime < STALE_TMP_S:
                    continue
                path.unlink()
            except FileNotFoundError:
                pass

    # -- merging -------------------------------------------------------------------------
    def merge_candidates(self, c: Any) -> list[str]:
        """The oldest ``FANOUT`` runs of the lowest tier that has that many (or none)."""
        tiers: dict[int, list[str]] = {}
        for name, n in c.execute(f"SELECT name, n FROM {self.runs_table} ORDER BY rowid"):
            tier = max(0, int(math.log(max(n, 1) / TIER_BASE, FANOUT))) if n > TIER_BASE else 0
            tiers.setdefault(tier, []).append(name)
        for tier in sorted(tiers):
            if len(tiers[tier]) >= FANOUT:
                return tiers[tier][:FANOUT]
        return []

    def write_merged(self, sources: list[Run]) -> tuple[Path, int]:
        """Merge ``sources`` into one sorted ``.tmp`` run file (flushed); memory stays bounded
        by ``MERGE_CHUNK`` entries per source."""
        total = sum(r.n for r in sources)
        path = self.folder / f"merge-{uuid.uuid4().hex}.tmp"
        # Each column has its region of the file (sizes known up front): chunks go in place.
        regions = [HEADER, HEADER + 8 * total, HEADER + 16 * total, HEADER + 20 * total]
        hashers = [xxhash.xxh3_128() for _ in WIDTHS]
        done = 0
        with _writing(path):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                for chunk in _merged_chunks(sources):
                    for region, width, arr, hasher in zip(regions, WIDTHS, chunk, hashers):
                        data = arr.tobytes()
                        hasher.update(data)
                        os.pwrite(fd, data, region + done * width)
                    done += len(chunk[0])
                digest = xxhash.xxh3_128_digest(b"".join(h.digest() for h in hashers))
                os.pwrite(fd, _header(total, digest), 0)
                os.ftruncate(fd, _file_size(total))
                os.fsync(fd)
            finally:
                os.close(fd)
        return path, total

    def swap_in(self, c: Any, tmp: Path, n: int, sources: list[str]) -> bool:
        """In the caller's transaction: the merged run replaces ``sources`` if they are all
        still named (another merge may have taken them); the caller deletes the sources'
        files after the commit (``unlink_runs``)."""
        named = {name for (name,) in c.execute(f"SELECT name FROM {self.runs_table}")}
        if not set(sources) <= named:
            return False
        final = tmp.with_name(tmp.name.replace(".tmp", ".led"))
        os.replace(tmp, final)
        c.executemany(f"DELETE FROM {self.runs_table} WHERE name = ?", [(s,) for s in sources])
        c.execute(f"INSERT INTO {self.runs_table} (name, n) VALUES (?, ?)", (final.name, n))
        return True

    def unlink_runs(self, names: list[str]) -> None:
        for name in names:
            self._open.pop(name, None)
            try:
                (self.folder / name).unlink()
            except FileNotFoundError:
                pass

    def bytes_on_disk(self) -> int:
        if not self.folder.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())


def _matches(run: Run, keys: np.ndarray, checks: np.ndarray
             ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(query positions, vids, seqs)`` of the entries of ``run`` whose key and check equal
    a query's (``keys`` sorted); a key held several times (versions, collisions) is walked."""
    if not run.n:
        return
    pos = np.searchsorted(run.keys, keys, "left")
    live = np.flatnonzero(pos < run.n)
    live = live[run.keys[pos[live]] == keys[live]]
    while live.size:
        at = pos[live]
        same = run.checks[at] == checks[live]
        if same.any():
            yield live[same], np.asarray(run.vids[at[same]]), np.asarray(run.seqs[at[same]])
        pos[live] += 1
        nxt = pos[live]
        inside = nxt < run.n
        live, nxt = live[inside], nxt[inside]
        live = live[run.keys[nxt] == keys[live]]


def _merged_chunks(sources: list[Run]) -> Iterator[tuple[np.ndarray, ...]]:
    """The entries of sorted runs in key order, ``MERGE_CHUNK`` per source at a time: each
    step takes from every source the entries up to the smallest of their chunk ends."""
    at = [0] * len(sources)
    while True:
        ends = [min(r.n, a + MERGE_CHUNK) for r, a in zip(sources, at)]
        open_ = [i for i, r in enumerate(sources) if at[i] < r.n]
        if not open_:
            return
        # The bound: the smallest last key among sources not yet exhausted by this chunk.
        bounded = [sources[i].keys[ends[i] - 1] for i in open_ if ends[i] < sources[i].n]
        limit = min(bounded) if bounded else None
        pieces = []
        for i in open_:
            r = sources[i]
            stop = ends[i] if limit is None else int(np.searchsorted(
                r.keys[at[i]:ends[i]], limit, "right")) + at[i]
            if stop > at[i]:
                pieces.append((r, at[i], stop))
                at[i] = stop
        keys = np.concatenate([r.keys[a:b] for r, a, b in pieces])
        order = np.argsort(keys, kind="stable")
        yield (keys[order],
               np.concatenate([r.checks[a:b] for r, a, b in pieces])[order],
               np.concatenate([r.seqs[a:b] for r, a, b in pieces])[order],
               np.concatenate([r.vids[a:b] for r, a, b in pieces])[order])
