"""Queue store: verbs, fencing, poison, corrupt rows, names, big posts."""
from __future__ import annotations

import json
import sqlite3

import pyarrow as pa
import pytest

from queue_store import codec
from queue_store.models import Ack
from tests.queue_helpers import Store, complete, posts_of, queued_uris
from queue_store.rows.validation import REASONS
from tests.conftest import make_posts

NAME = "ml_inference_intergroup"


class FakeClock:
    """Lease time the test moves by hand: no lease can expire because the machine is slow."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def store(tmp_path, clock):
    s = Store(tmp_path, NAME, max_attempts=3, clock=clock)
    yield s
    s.close()


def _ack_all(store, batch, label=1):
    return complete(store, batch, {p["uri"]: {"label": label} for p in posts_of(batch)}, {})


def test_enqueue_batches_and_metadata(store):
    res = store.enqueue(make_posts(2500), batch_size=1000)
    assert (res.enqueued_posts, res.enqueued_batches) == (2500, 3)
    batches = store.claim(max_batches=10)
    assert [len(posts_of(b)) for b in batches] == [1000, 1000, 500]
    [(meta,)] = store.conn.execute(f"SELECT metadata FROM {store.tables['input']} WHERE id = ?",
                                   (batches[2].batch_id,)).fetchall()
    assert json.loads(meta) == {"batch_size": 1000, "actual_batch_size": 500}
    assert all(b.attempt == 1 for b in batches)


def test_invalid_posts_are_counted_with_reasons(store):
    ok = make_posts(2)
    bad = [
        {"uri": "a", "text": "   ", "preprocessing_timestamp": "2024-10-01"},
        {"uri": "b", "text": "NaN", "preprocessing_timestamp": "2024-10-01"},
        {"uri": "c", "text": " None ", "preprocessing_timestamp": "2024-10-01"},
        {"uri": "d", "text": "hey", "preprocessing_timestamp": "2024-10-01"},
        {"uri": "e", "text": "long enough", "preprocessing_timestamp": None},
        {"uri": "f", "text": "long enough", "preprocessing_timestamp": "yesterday"},
        {"uri": "", "text": "long enough", "preprocessing_timestamp": "2024-10-01"},
        {"uri": "g", "text": None, "preprocessing_timestamp": "2024-10-01"},
        dict(ok[0]),
    ]
    res = store.enqueue(ok + bad)
    assert res.enqueued_posts == 2
    assert {i.uri: i.reason for i in res.invalid} == {
        "a": "empty text", "b": "placeholder text", "c": "placeholder text",
        "d": "text under 5 characters", "e": "missing timestamp", "f": "bad timestamp",
        "": "missing uri", "g": "empty text", ok[0]["uri"]: "duplicate uri"}
    assert set(res.invalid_by_reason) <= set(REASONS)


def test_claim_hands_each_batch_once_and_reaps_expired(store, clock):
    store.enqueue(make_posts(300), batch_size=100)
    first = store.claim(2, lease_seconds=20, owner="a")
    second = store.claim(5, lease_seconds=60, owner="b")
    assert {b.batch_id for b in first}.isdisjoint({b.batch_id for b in second})
    assert store.claim(5) == []
    clock.advance(19.9)
    assert store.claim(5) == []  # not expired yet
    clock.advance(0.2)
    again = store.claim(5, owner="c")  # the expired leases are reaped inside claim
    assert sorted(b.batch_id for b in again) == sorted(b.batch_id for b in first)
    assert all(b.attempt == 2 for b in again)


def test_extend_keeps_lease_alive(store, clock):
    store.enqueue(make_posts(10))
    [b] = store.claim(1, lease_seconds=30)
    for _ in range(3):
        clock.advance(20)  # 60 s in all: twice the lease, kept alive by the heartbeat
        assert store.extend([(b.batch_id, b.lease_id)], lease_seconds=30) == 1
    assert store.claim(1) == []
    assert _ack_all(store, b).accepted


def test_complete_is_fenced_by_lease(store, clock):
    store.enqueue(make_posts(10))
    [b] = store.claim(1, lease_seconds=10)
    clock.advance(11)
    [b2] = store.claim(1)
    assert b2.batch_id == b.batch_id and b2.lease_id != b.lease_id
    stale = _ack_all(store, b, label=0)
    assert not stale.accepted
    assert store.status().output_rows_unexported == 0
    assert _ack_all(store, b2).accepted
    assert not _ack_all(store, b2).accepted  # a second ack is also fenced out
    assert store.status().output_rows_unexported == 10


def test_complete_must_cover_the_batch_exactly(store):
    store.enqueue(make_posts(5))
    [b] = store.claim(1)
    uris = [p["uri"] for p in posts_of(b)]
    with pytest.raises(ValueError, match="each of its 5 posts once: got 4 labelled"):
        complete(store, b, {u: {} for u in uris[1:]}, {})
    with pytest.raises(ValueError, match="got 5 labelled and 1 failed"):
        complete(store, b, {u: {} for u in uris}, {uris[0]: "x"})
    twice = [({"uri": u}, "x") for u in [uris[0], *uris[:-1]]]  # 5 failures, one post twice
    with pytest.raises(ValueError, match="names a post twice"):
        store.complete([Ack(batch_id=b.batch_id, lease_id=b.lease_id, failed=twice)])
    st = store.status()
    assert st.processing_posts == 5 and st.output_rows_unexported == 0  # nothing written


def test_poison_post_dead_lettered_after_max_attempts(store):
    store.enqueue(make_posts(10))
    poison = "at://post/3"
    for attempt in (1, 2, 3):
        [b] = store.claim(1)
        assert b.attempt == attempt
        ok = {p["uri"]: {"label": 1} for p in posts_of(b) if p["uri"] != poison}
        res = complete(store, b, ok, {poison: f"ValueError: bad {attempt}"})
        assert res.accepted
        assert (res.retried, res.dead_lettered) == ((1, 0) if attempt < 3 else (0, 1))
    assert store.claim(1) == []
    [dead] = store.dead_letters()
    assert dead.uri == poison and dead.reason == "ValueError: bad 3" and dead.attempt == 3
    st = store.status()
    assert (st.output_rows_unexported, st.dead_posts, st.pending_posts) == (9, 1, 0)
    assert len(queued_uris(store, [p["uri"] for p in make_posts(10)])) == 10
    assert store.requeue_dead() == 1
    [b] = store.claim(1)
    assert [p["uri"] for p in posts_of(b)] == [poison] and b.attempt == 1


def test_fail_returns_batch_then_buries_it(store):
    store.enqueue(make_posts(4))
    for attempt in (1, 2, 3):
        [b] = store.claim(1)
        assert store.fail(b.batch_id, b.lease_id, "worker crashed")
        assert not store.fail(b.batch_id, b.lease_id, "again")  # fenced
    assert store.status().dead_posts == 4 and store.status().pending_posts == 0


def test_reap_buries_batches_that_keep_losing_their_worker(store, clock):
    store.enqueue(make_posts(4))
    for _ in range(3):
        store.claim(1, lease_seconds=10)
        clock.advance(11)
    res = store.reap()
    assert res.dead_lettered_batches == 1
    assert "lease expired on attempt 3" in store.dead_letters()[0].reason


def _stored(table: pa.Table) -> bytes:
    return table.to_batches()[0].serialize().to_pybytes()


GOOD = codec.dumps_posts(pa.table({c: ["x"] for c in ("uri", "text", "preprocessing_timestamp")}))


@pytest.mark.parametrize("payload", [
    b"{not json", GOOD[:-8], b"", b"\x00" * 64,
    _stored(pa.table({"a": pa.array([1], pa.int64())})),  # another shape
    codec.dumps_posts(pa.table({"uri": pa.array([None], pa.string()), "text": ["x"],
                                "preprocessing_timestamp": ["x"]}))])  # a post without a uri
def test_corrupt_rows_go_to_dead_letters(store, payload):
    store.enqueue(make_posts(3))
    conn = sqlite3.connect(store.path)
    conn.execute(f"INSERT INTO input_{NAME} (payload, metadata, n_posts, version, created_at) "
                 "VALUES (?, '{}', 1, '', 0)", (payload,))
    conn.commit()
    conn.close()
    store.enqueue(make_posts(3, start=3))
    decoded = []
    for b in store.claim(10):  # the worker decodes; what it cannot decode, it buries
        try:
            decoded.append(len(posts_of(b)))
        except codec.PayloadError as exc:
            assert store.bury_undecodable(b.batch_id, b.lease_id, str(exc))
    assert decoded == [3, 3]
    st = store.status()
    assert st.dead_undecodable_rows == 1 and st.processing_posts == 6 and st.pending_posts == 0
    assert store.requeue_dead() == 0  # undecodable rows are never sent back to pending
    assert store.claim(10) == []


def test_batches_are_stored_compressed_and_uncompressed_ones_still_claim(store):
    """Posts are queued zstd-compressed; a batch queued uncompressed (as earlier versions did,
    in a queue file a researcher keeps) is claimed, labelled and completed the same way."""
    def fields(posts):
        return [{c: p[c] for c in codec.POST_COLUMNS} for p in posts]

    posts, older = make_posts(500), make_posts(3, start=500)
    store.enqueue(posts, batch_size=500)
    [(stored,)] = store.conn.execute(f"SELECT payload FROM input_{NAME}").fetchall()
    assert len(stored) < len(_stored(codec.posts_table(fields(posts)))) / 2
    store.conn.execute(f"INSERT INTO input_{NAME} (payload, metadata, n_posts, version, "
                       "created_at) VALUES (?, '{}', 3, '', 0)",
                       (_stored(codec.posts_table(fields(older))),))
    new, old = store.claim(10)
    assert posts_of(new) == fields(posts) and posts_of(old) == fields(older)
    assert _ack_all(store, new).accepted and _ack_all(store, old).accepted
    st = store.status()
    assert st.pending_posts == st.processing_posts == 0


@pytest.mark.parametrize("name", ["x; DROP TABLE meta", "1abc", "a-b", "", "a" * 65, "é"])
def test_unsafe_integration_names_are_rejected(tmp_path, name):
    with pytest.raises(ValueError, match="invalid integration name"):
        Store(tmp_path, name)


def test_one_megabyte_post_round_trips(store):
    text = "groups 🤝 " * 110_000
    store.enqueue([{"uri": "big", "text": text, "preprocessing_timestamp": "2024-10-01"}])
    [b] = store.claim(1)
    assert posts_of(b)[0]["text"] == text and len(text.encode()) > 1_000_000
    assert _ack_all(store, b).accepted


def test_enqueue_accepts_arrow_and_pandas(store):
    import pandas as pd
    import pyarrow as pa

    rows = make_posts(4)
    assert store.enqueue(pa.Table.from_pylist(rows[:2])).enqueued_posts == 2
    assert store.enqueue(pd.DataFrame(rows[2:])).enqueued_posts == 2
    with pytest.raises(ValueError, match="missing column"):
        store.enqueue([{"uri": "x", "text": "hello there"}])


def test_queue_file_is_shared_between_connections(tmp_path):
    a = Store(tmp_path, NAME)
    b = Store(tmp_path, NAME)
    a.enqueue(make_posts(5))
    assert b.status().pending_posts == 5 and a.store_id == b.store_id


def test_release_undoes_a_claim_without_spending_an_attempt(store):
    store.enqueue(make_posts(5))
    [b] = store.claim(1)
    assert store.release(b.batch_id, b.lease_id)
    assert not store.release(b.batch_id, b.lease_id)  # fenced: no longer held
    [again] = store.claim(1)
    assert again.batch_id == b.batch_id and again.attempt == 1


def test_a_queue_file_with_the_old_lease_index_gets_the_covering_ones_when_opened(tmp_path):
    """Files made before kept the lease index without the holder and no count index: the
    next writable open replaces and adds them, nothing queued changes, and the reads that
    every claim and every status poll make are answered from the indexes alone."""
    store = Store(tmp_path, "ml_inference_intergroup")
    store.enqueue(make_posts(300), batch_size=100)
    [held] = store.claim()
    t = store.tables["input"]
    store.conn.execute(f"DROP INDEX {t}_leases")
    store.conn.execute(f"DROP INDEX {t}_counts")
    store.conn.execute(f"CREATE INDEX {t}_leased ON {t}(lease_expires) WHERE status = "
                       "'processing'")  # as such a file has it
    store.close()
    store = Store(tmp_path, "ml_inference_intergroup")
    names = {n for (n,) in store.conn.execute("SELECT name FROM sqlite_master WHERE "
                                              "type = 'index'")}
    assert {f"{t}_leases", f"{t}_counts"} <= names and f"{t}_leased" not in names
    for query in (f"SELECT DISTINCT lease_owner FROM {t} WHERE status = 'processing' AND "
                  "lease_expires >= 0",
                  f"SELECT status, COUNT(*), SUM(n_posts) FROM {t} GROUP BY 1",
                  f"SELECT MIN(lease_expires) FROM {t} WHERE status = 'processing' AND "
                  "version = ''"):
        steps = [r[3] for r in store.conn.execute(f"EXPLAIN QUERY PLAN {query}")]
        reads = [s for s in steps if s.startswith((f"SCAN {t}", f"SEARCH {t}"))]
        assert reads and all("INDEX" in s for s in reads), steps  # never the rows
    st = store.status()
    assert (st.pending_posts, st.processing_posts) == (200, 100)
    assert store.release(held.batch_id, held.lease_id)
    store.close()
