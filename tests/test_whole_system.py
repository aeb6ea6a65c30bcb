"""The queue store as one system: a ``hypothesis`` state machine interleaves enqueues of
overlapping posts under several versions (relabels too), claims, completes with failures,
nacks, crashes (claims lost, a connection dropped mid-transaction, a process killed
mid-merge or mid-compaction), reaps, posts queued before their model and adopted once it
comes, clears of the input and output queues, exports, queue
and output compactions, a label column that appears part-way, a damaged ledger and its
rebuild — and after every step checks against a reference model that every valid post is in
exactly one place per version, every exported (uri, config_hash) is in the parquet output
exactly once, and no label value is lost.

In CI it runs a bounded number of sequences (``BACKFILL_SOAK`` unset); ``make soak`` (or
``BACKFILL_SOAK=10000 pytest tests/test_whole_system.py``) runs that many and prints the
count. A failing sequence that hypothesis shrinks becomes a regular test below the machine.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from contextlib import contextmanager
from unittest import mock

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

import queue_store.compaction as compaction
from jobs.stages.enqueue import rebuild_ledger
from queue_store import QueueBusyError
from tests.queue_helpers import NAME, Store, complete, export_output, posts_of
from queue_store.ledger import LedgerDamaged
from queue_store.location import Location
from queue_store.staging import staged_uris
from tests.audit import places
from tests.conftest import make_posts

SOAK = int(os.environ.get("BACKFILL_SOAK", "0"))
VERSIONS = ("A", "B")
EARLY = "A-before-its-model"  # A's config_hash while its model was not there yet
MAX_ATTEMPTS = 2
LEASE_S = 30.0
# 16 valid posts over two days, and two invalid ones (too short, no timestamp).
POSTS = make_posts(16, days=2) + [
    {"uri": "at://bad/short", "text": "hey", "preprocessing_timestamp": "2024-10-01-00:00:00"},
    {"uri": "at://bad/nots", "text": "a post without a timestamp", "preprocessing_timestamp": ""}]
VALID = {p["uri"] for p in POSTS[:16]}
TMP_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
RAN = {"sequences": 0, "steps": 0}


class ConnectionDropped(Exception):
    pass


class DroppedBeforeCommit(Store):
    """A store whose process loses its connection inside every transaction, before COMMIT
    (what a SIGKILL there leaves: whatever the verb wrote outside SQLite, nothing inside)."""

    @contextmanager
    def _transaction(self):
        self.conn.execute("BEGIN IMMEDIATE")
        yield self.conn
        raise ConnectionDropped


class WholeSystem(RuleBasedStateMachine):
    """The reference model: ``place[(uri, version)]`` is ``queued``, ``dead``, ``output``
    (not exported yet) or ``exported``; ``labels`` holds what each labelled post was given.
    Claims held by a live worker (``held``) and by a crashed one (``lost``) are tracked with
    the attempt the claim spent."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="whole-system-", dir=TMP_ROOT))
        self.now = 1_000_000.0
        self.store = self._open()
        self.out = self.dir / "out"
        self.place: dict[tuple[str, str], str] = {}
        self.labels: dict[tuple[str, str], dict] = {}
        self.held: list = []
        self.lost: list = []
        self.reaped: list = []
        self.extra = False  # the label column "score" exists from now on
        self.damaged = False
        self.adopted: set[str] = set()  # posts moved from EARLY to A (placed nowhere under EARLY)
        RAN["sequences"] += 1

    def _open(self) -> Store:
        return Store(self.dir, NAME, max_attempts=MAX_ATTEMPTS, clock=lambda: self.now)

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _leased(self) -> bool:
        return bool(self.held or self.lost)

    # -- producers ---------------------------------------------------------------------------
    @initialize(version=st.sampled_from(VERSIONS))
    def start(self, version: str) -> None:
        self.enqueue(list(range(len(POSTS))), version, False, 3)

    @precondition(lambda self: not self.damaged)
    @rule(picks=st.lists(st.integers(0, len(POSTS) - 1), min_size=1, max_size=12),
          version=st.sampled_from(VERSIONS), relabel=st.booleans(),
          batch_size=st.integers(1, 5))
    def enqueue(self, picks: list[int], version: str, relabel: bool, batch_size: int) -> None:
        posts = [POSTS[i] for i in picks]
        expected = []
        for uri in dict.fromkeys(p["uri"] for p in posts):
            if uri not in VALID or self._known(uri, version):
                continue
            if not relabel and any(self._known(uri, v) for v in (*VERSIONS, EARLY)):
                continue
            expected.append(uri)
        got = self.store.enqueue(posts, batch_size=batch_size, config_hash=version,
                                 relabel=relabel)
        assert got.enqueued_posts == len(expected), (got, expected)
        for uri in expected:
            self.place[(uri, version)] = "queued"

    @precondition(lambda self: not self.damaged)
    @rule(picks=st.lists(st.integers(0, len(POSTS) - 1), min_size=1, max_size=12),
          relabel=st.booleans(), batch_size=st.integers(1, 5))
    def enqueue_before_the_model(self, picks: list[int], relabel: bool, batch_size: int) -> None:
        """``--classifier-later``: A's posts queued under the hash computed without A's model
        (no run claims it)."""
        self.enqueue(picks, EARLY, relabel, batch_size)

    @precondition(lambda self: not self.damaged)
    @rule()
    def the_model_arrives(self) -> None:
        """A command with A's model in place adopts what was queued before it: each post
        queued for A once (one already queued or labelled for A is dropped)."""
        self.store.adopt(EARLY, "A")
        for (uri, version), where in list(self.place.items()):
            if version == EARLY and where == "queued":
                del self.place[(uri, EARLY)]
                self.adopted.add(uri)  # the ledger still knows it under EARLY
                self.place.setdefault((uri, "A"), "queued")

    def _known(self, uri: str, version: str) -> bool:
        """Would the ledger call this post queued before for ``version``?"""
        return (uri, version) in self.place or (version == EARLY and uri in self.adopted)

    @precondition(lambda self: not self.damaged)
    @rule(picks=st.lists(st.integers(0, 15), min_size=1, max_size=8),
          version=st.sampled_from(VERSIONS))
    def enqueue_dropped_mid_transaction(self, picks: list[int], version: str) -> None:
        """Another process's enqueue whose connection is dropped before its commit: its run
        file is written, nothing is committed."""
        other = DroppedBeforeCommit(self.dir, NAME, max_attempts=MAX_ATTEMPTS,
                                    clock=lambda: self.now)
        with pytest.raises(ConnectionDropped):
            other.enqueue([POSTS[i] for i in picks], batch_size=2, config_hash=version)
        other.conn.close()  # SQLite rolls the transaction back

    # -- consumers ---------------------------------------------------------------------------
    @rule(version=st.sampled_from(VERSIONS), n=st.integers(1, 3))
    def claim(self, version: str, n: int) -> None:
        for b in self.store.claim(n, LEASE_S, owner="worker", config_hash=version):
            for post in posts_of(b):
                assert self.place.get((post["uri"], version)) == "queued", post
            assert all(b.batch_id != h.batch_id for h in self.held + self.lost)
            self.held.append(b)

    def _failed(self, b, uris: list[str]) -> None:
        for uri in uris:
            self.place[(uri, b.config_hash)] = "dead" if b.attempt >= MAX_ATTEMPTS else "queued"

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def complete(self, data) -> None:
        b = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        uris = [p["uri"] for p in posts_of(b)]
        self._complete(b, data.draw(st.sets(st.sampled_from(uris))) if uris else set())

    @rule(version=st.sampled_from(VERSIONS), fail_every=st.integers(0, 4),
          export=st.booleans())
    def run_to_the_end(self, version: str, fail_every: int, export: bool) -> None:
        """What a run does: the claims it holds and every claimable batch of its version
        completed (every ``fail_every``-th post fails), then (maybe) the export; the
        crashed worker's claims are reaped first."""
        self.time_passes_and_reap()
        n = 0
        while True:
            self.claim(version, 3)
            if not self.held:
                break
            while self.held:
                b = self.held.pop()
                failing = set()
                for p in posts_of(b):
                    n += 1
                    if fail_every and n % fail_every == 0:
                        failing.add(p["uri"])
                self._complete(b, failing)
        if export:
            self.export(50)

    def _complete(self, b, failing: set[str]) -> None:
        uris = [p["uri"] for p in posts_of(b)]
        labels = {}
        for uri in uris:
            if uri not in failing:
                labels[uri] = {"label": f"L-{uri}-{b.config_hash}", "config_hash": b.config_hash,
                               **({"score": float(len(uri))} if self.extra else {})}
        res = complete(self.store, b, labels, {u: "poison" for u in failing})
        assert res.accepted
        for uri, values in labels.items():
            self.place[(uri, b.config_hash)] = "output"
            self.labels[(uri, b.config_hash)] = values
        self._failed(b, sorted(failing))

    @precondition(lambda self: self.held)
    @rule(data=st.data(), release=st.booleans())
    def nack(self, data, release: bool) -> None:
        b = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        if release:
            assert self.store.release(b.batch_id, b.lease_id)
        else:
            assert self.store.fail(b.batch_id, b.lease_id, "worker error")
            self._failed(b, [p["uri"] for p in posts_of(b)])

    @precondition(lambda self: self.held)
    @rule()
    def worker_crashes(self) -> None:
        """The worker holding the claims dies: its leases stay until they expire."""
        self.lost += self.held
        self.held = []

    @rule()
    def time_passes_and_reap(self) -> None:
        """A lease's time passes; the live worker's heartbeat renews its leases, the lost
        ones expire and are reaped (to pending, or to dead letters at max_attempts)."""
        self.now += LEASE_S + 1
        assert self.store.extend([(b.batch_id, b.lease_id) for b in self.held],
                                 LEASE_S) == len(self.held)
        self.store.reap()
        for b in self.lost:
            self._failed(b, [p["uri"] for p in posts_of(b)])
        self.reaped += self.lost
        self.lost = []

    @precondition(lambda self: self.reaped)
    @rule(data=st.data())
    def stale_worker_completes(self, data) -> None:
        """A worker thought dead comes back and completes a reaped claim: fenced out."""
        b = self.reaped.pop(data.draw(st.integers(0, len(self.reaped) - 1)))
        res = complete(self.store, b, {p["uri"]: {"label": "stale"} for p in posts_of(b)})
        assert not res.accepted

    @rule()
    def requeue_dead(self) -> None:
        self.store.requeue_dead(batch_size=3)
        for key, where in self.place.items():
            if where == "dead":
                self.place[key] = "queued"

    # -- output ------------------------------------------------------------------------------
    @rule(max_rows=st.integers(1, 10))
    def export(self, max_rows: int) -> None:
        export_output(self.store, self.out, max_rows)
        for key, where in self.place.items():
            if where == "output":
                self.place[key] = "exported"

    @rule()
    def clear_exported_rows(self) -> None:
        self.store.clear_exported()

    @rule()
    def grow_schema(self) -> None:
        self.extra = True

    # -- clearing ----------------------------------------------------------------------------
    @rule()
    def clear_input(self) -> None:
        if self._leased():
            with pytest.raises(QueueBusyError):
                self.store.clear_input()
            return
        self.store.clear_input()
        self.place = {k: w for k, w in self.place.items() if w not in ("queued", "dead")}

    @rule()
    def clear_output(self) -> None:
        if self._leased():
            with pytest.raises(QueueBusyError):
                self.store.clear_output()
            return
        self.store.clear_output(staged_uris(Location.of(self.out)))  # as the CLI clears
        self.place = {k: w for k, w in self.place.items() if w != "output"}

    # -- maintenance and crashes -------------------------------------------------------------
    @rule(full=st.booleans())
    def compact_queue(self, full: bool) -> None:
        if full and self._leased():
            with pytest.raises(QueueBusyError):
                self.store.compact(full=True)
            return
        self.store.compact(full=full)

    @rule(target_rows=st.integers(2, 12),
          crash=st.sampled_from([None, "before the swap", "after the swap"]))
    def compact_output(self, target_rows: int, crash: str | None) -> None:
        if self._leased():
            with pytest.raises(QueueBusyError):
                compaction.compact_output(self.store, Location.of(self.out), target_rows)
            return
        if "output" in self.place.values():  # recorded files not published: refused, so
            with pytest.raises(QueueBusyError, match="not published"):  # the CLI publishes
                compaction.compact_output(self.store, Location.of(self.out), target_rows)
            self.export(10)
        patch = ({"before the swap": mock.patch.object(compaction, "exchange",
                                                       side_effect=OSError("killed")),
                  "after the swap": mock.patch.object(compaction, "_retire",
                                                      side_effect=OSError("killed"))}
                 .get(crash) if crash else None)
        if patch is None:
            compaction.compact_output(self.store, Location.of(self.out), target_rows)
            return
        with patch:
            try:
                compaction.compact_output(self.store, Location.of(self.out), target_rows)
            except OSError:
                pass  # the process died here: what it left is checked below

    @precondition(lambda self: not self.damaged)
    @rule(after_commit=st.booleans())
    def merge_killed(self, after_commit: bool) -> None:
        """A ledger merge killed before its swap (a ``.tmp`` left) or after its commit (the
        merged sources left on disk)."""
        led, conn = self.store.ledger, self.store.conn
        sources = led.merge_candidates(conn)
        if not sources:
            return
        tmp, n = led.write_merged([r for r in led.runs(conn) if r.name in sources])
        if after_commit:
            with self.store._transaction() as c:
                assert led.swap_in(c, tmp, n, sources)

    @precondition(lambda self: not self.damaged)
    @rule(which=st.integers(0, 1 << 16), where=st.integers(0, 1 << 16))
    def damage_the_ledger(self, which: int, where: int) -> None:
        """One byte of one run file's entries altered (names are random: drawn by rank)."""
        names = [r for (r,) in self.store.conn.execute(
            f"SELECT name FROM {self.store.tables['ledger_runs']} ORDER BY rowid")]
        if not names:
            return
        path = self.store.ledger.folder / names[which % len(names)]
        raw = bytearray(path.read_bytes())
        if len(raw) <= 32:
            return
        raw[32 + where % (len(raw) - 32)] ^= 0x5A
        path.write_bytes(bytes(raw))
        self.store.close()  # a new process maps the file anew
        self.store = self._open()
        self.damaged = True
        before = self.store.status().pending_posts
        with pytest.raises(LedgerDamaged):
            self.store.enqueue(POSTS, batch_size=2, config_hash="A", relabel=True)
        assert self.store.status().pending_posts == before  # nothing queued

    @rule()
    def rebuild_ledger(self) -> None:
        rebuild_ledger(self.store, Location.of(self.out))  # --rebuild-ledger: publishes first
        self.place = {k: "exported" if w == "output" else w for k, w in self.place.items()}
        self.store.verify_ledger()
        self.damaged = False
        self.adopted = set()  # rebuilt from what is queued and exported: EARLY holds nothing

    # -- the invariants ----------------------------------------------------------------------
    @invariant()
    def every_post_is_in_exactly_one_place(self) -> None:
        RAN["steps"] += 1
        found = places(self.store.path, NAME, self.out)
        assert not found.problems(), found.problems()
        for key in found.every() | set(self.place):
            expect = self.place.get(key)
            where = ("queued" if found.pending[key] or found.leased[key] else
                     "dead" if found.dead[key] else
                     "output" if found.unexported[key] else
                     "exported" if found.parquet[key] else None)
            assert where == expect, (key, where, expect)
            if where in ("output", "exported"):
                row = found.rows[key]
                for column, value in self.labels[key].items():
                    assert row[column] == value, (key, column, row)  # no value lost
        leased = sum(found.leased.values())
        assert leased == sum(b.n_posts for b in self.held + self.lost)
        assert not found.planned_exports


WholeSystem.TestCase.settings = settings(
    max_examples=SOAK or 300, stateful_step_count=40, deadline=None, derandomize=not SOAK,
    suppress_health_check=list(HealthCheck), print_blob=True)
test_whole_system = WholeSystem.TestCase


def _replay(*steps: tuple[str, dict]) -> None:
    """Run one sequence of the machine's rules, checking the invariants after each."""
    machine = WholeSystem()
    try:
        for name, kwargs in steps:
            getattr(machine, name)(**kwargs)
            machine.every_post_is_in_exactly_one_place()
    finally:
        machine.teardown()


def test_shrunk_clearing_a_relabel_keeps_the_first_versions_labels_known():
    """Found by the machine (soak, before per-version forgets): a relabel under A of a post
    queued under B, B's run, a clear of the input queue — then A's enqueue queued the post
    again although its B labels stay (and vice versa: B's labels counted as forgotten)."""
    _replay(("start", {"version": "B"}),
            ("enqueue", {"picks": [0], "version": "A", "relabel": True, "batch_size": 1}),
            ("run_to_the_end", {"version": "A", "fail_every": 0, "export": False}),
            ("clear_input", {}),
            ("enqueue", {"picks": [0], "version": "A", "relabel": False, "batch_size": 1}))


@pytest.fixture(scope="module", autouse=True)
def _say_how_many_ran():
    yield
    print(f"\nwhole-system checker: {RAN['sequences']} sequences, {RAN['steps']} checked "
          "steps")
