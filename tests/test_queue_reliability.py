"""Queue store faults found in real use: racing enqueues, dead lease holders, exports that
cannot be converted, a queue file that vanishes, posts with the wrong types."""
from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from queue_store import codec
from tests.queue_helpers import Store, complete, complete_as_before, export_output, fifty_posts_and_a_claimer, posts_of, spawn_queue_proc
from queue_store.lease_holder import LeaseHolder
from queue_store.schema import NoQueueError, QueueFileError
from tests.conftest import make_posts

NAME = "ml_inference_intergroup"
ROOT = Path(__file__).resolve().parents[1]


def _queued_uris(store: Store) -> list[str]:
    uris = []
    for (payload,) in store.conn.execute(f"SELECT payload FROM {store.tables['input']}"):
        uris.extend(codec.loads_posts(payload).column("uri").to_pylist())
    return uris


@pytest.mark.slow
def test_three_concurrent_enqueues_of_overlapping_posts_queue_each_once(tmp_path):
    Store(tmp_path, NAME).close()
    gate = tmp_path / "go"
    ranges = [(0, 1500), (500, 2000), (1000, 2500)]
    outs = [tmp_path / f"n{i}.json" for i in range(3)]
    procs = [spawn_queue_proc("enqueue_range", str(tmp_path), str(a), str(b), str(gate), str(o))
             for (a, b), o in zip(ranges, outs)]
    time.sleep(1.5)
    gate.touch()
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    uris = _queued_uris(Store(tmp_path, NAME))
    assert len(uris) == len(set(uris)) == 2500
    assert sum(json.loads(o.read_text()) for o in outs) == 2500


def test_reenqueue_counts_known_posts_from_the_ledger(tmp_path):
    store = Store(tmp_path, NAME)
    store.enqueue(make_posts(10), batch_size=5)
    [b] = store.claim(1)
    complete(store, b, {p["uri"]: {"label": 1} for p in posts_of(b)}, {})
    res = store.enqueue(make_posts(12))  # 5 labelled (unexported), 5 queued, 2 new
    assert (res.enqueued_posts, res.skipped_known) == (2, 10)


def test_a_queue_file_of_an_older_format_is_refused_with_one_line(tmp_path):
    """A file written by the previous layout (no version column, no format marker): one
    line naming the file and the way out, nothing changed in it."""
    path = tmp_path / "queue" / f"{NAME}.db"
    path.parent.mkdir()
    old = sqlite3.connect(path)
    old.executescript(f"""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('store_id', 'abc123'), ('ledger', '1');
        CREATE TABLE input_{NAME} (id INTEGER PRIMARY KEY AUTOINCREMENT, payload TEXT NOT NULL,
            metadata TEXT NOT NULL, n_posts INTEGER NOT NULL, status TEXT NOT NULL DEFAULT
            'pending', lease_id TEXT, lease_owner TEXT, lease_expires REAL,
            attempt INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL);
        INSERT INTO input_{NAME} (payload, metadata, n_posts, created_at)
            VALUES ('[{{"uri": "a", "text": "hello there", "preprocessing_timestamp": "x"}}]',
                    '{{}}', 1, 0);""")
    old.commit()
    old.close()
    before = path.read_bytes()
    for readonly in (False, True):
        with pytest.raises(QueueFileError, match="another version of this tool") as err:
            Store(tmp_path, NAME, readonly=readonly)
        assert str(path) in str(err.value) and "move the file away" in str(err.value)
    assert path.read_bytes() == before


@pytest.mark.slow
def test_leases_of_a_dead_holder_are_reaped_at_once(tmp_path):
    store, proc, leases = fifty_posts_and_a_claimer(tmp_path, "claim_as_this_process")
    assert proc.wait(timeout=60) == 0  # the holder exits; its hour-long leases stay
    taken = json.loads(leases.read_text())
    assert len(taken) == 3 and store.status().processing_batches == 3
    res = store.reap()
    assert res.dead_holder_batches == 3 and res.requeued_batches == 3
    live = store.claim(1, lease_seconds=3600, owner=LeaseHolder.this_process("me").encode())
    assert store.reap().requeued_batches == 0  # a live holder's lease is left alone
    st = store.status()
    assert st.processing_batches == 1 and st.pending_batches == 4  # ours stays leased
    assert live[0].batch_id in taken  # reclaimed at once, not after the hour-long lease


@pytest.mark.slow
def test_a_dead_holders_leases_taken_back_by_a_runs_first_claim_are_counted(tmp_path):
    """A run whose first step is a claim (posts pending on disk) takes a dead run's leases
    back inside that claim; its summary still says how many (it said 0 when only ``reap``
    counted)."""
    from actors.queue_actor import QueueActor

    store, proc, leases = fifty_posts_and_a_claimer(tmp_path, "claim_as_this_process")
    assert proc.wait(timeout=60) == 0  # the holder exits; its hour-long leases stay
    actor = QueueActor(str(tmp_path), NAME, 3, 60.0, LeaseHolder.this_process("r").encode(),
                       "")
    try:
        claimed = actor.next_batches(10)
        assert len(claimed) == 5  # the 2 pending batches and the dead holder's 3
        assert actor.get_stats().reaped_dead_holder_batches == 3
    finally:
        actor.stop()


def test_remote_or_live_holders_are_left_to_expiry():
    other_host = LeaseHolder(host="another-node", pid=1, started=0.0)
    assert not other_host.provably_dead()
    assert not LeaseHolder.this_process().provably_dead()
    assert LeaseHolder.parse("free-form owner") is None


def _label_then_export(store, *batches):
    """One completed batch per list of labels (each batch typed as the stage types one), held
    as output rows the way queue files written before labels went straight to parquet hold
    them (still exported)."""
    posts, start = [], 0
    for labels in batches:
        batch_posts = make_posts(len(labels), start=start)
        start += len(labels)
        store.enqueue(batch_posts, batch_size=len(labels))
        [b] = store.claim(1)
        complete_as_before(store, b, {p["uri"]: {"label": v}
                                      for p, v in zip(posts_of(b), labels)})
        posts += batch_posts
    return posts


def test_an_export_chunk_of_int_and_text_labels_never_jams(tmp_path):
    """Two runs fixed the label's type differently (int64 and text, batch by batch): the
    export keeps the first type, moves the rest to dead letters and goes on."""
    store = Store(tmp_path, NAME)
    ints, texts = [1, 0, 1, 1, 0, 1], ["x", "y"]
    posts = _label_then_export(store, ints, texts)
    stats = export_output(store, tmp_path / "out")
    assert stats.rows == 6 and stats.dead_lettered == 2
    table = pads.dataset(tmp_path / "out", partitioning="hive").to_table()
    assert table.schema.field("label").type == pa.int64()
    assert sorted(table.column("uri").to_pylist()) == sorted(p["uri"] for p in posts[:6])
    dead = store.dead_letters()
    assert sorted(d.uri for d in dead) == sorted(p["uri"] for p in posts[6:])
    assert all("label" in d.reason and "int64" in d.reason for d in dead)
    assert store.status().output_rows_unexported == 0
    assert export_output(store, tmp_path / "out").rows == 0  # nothing left, nothing stuck
    assert store.requeue_dead() == 2  # not lost: they can be labelled again


def test_later_exports_keep_the_first_exports_types(tmp_path):
    """An older queue file's output rows (see ``_label_then_export``)."""
    store = Store(tmp_path, NAME)
    for i, labels in enumerate(([1, 2], [0.5, 3], [None, 4])):
        posts = make_posts(2, start=10 * i)
        store.enqueue(posts)
        [b] = store.claim(1)
        complete_as_before(store, b, {p["uri"]: {"label": v}
                                      for p, v in zip(posts_of(b), labels)})
        export_output(store, tmp_path / "out")
    table = pads.dataset(tmp_path / "out", partitioning="hive").to_table()
    assert table.schema.field("label").type == pa.int64()
    assert sorted(v for v in table.column("label").to_pylist() if v is not None) == [1, 2, 3, 4]
    assert [d.uri for d in store.dead_letters()] == ["at://post/10"]  # 0.5 is not an int


def test_an_output_row_damaged_on_disk_never_jams_the_export(tmp_path):
    store = Store(tmp_path, NAME)
    _label_then_export(store, [1, 2, 3, 4], [5, 6, 7])
    t = store.tables["output"]
    (first, payload) = store.conn.execute(f"SELECT id, payload FROM {t} ORDER BY id").fetchone()
    store.conn.execute(f"UPDATE {t} SET payload = ? WHERE id = ?",
                       (payload[:40] + b"\x00garbage", first))  # one stored table damaged
    stats = export_output(store, tmp_path / "out")
    assert (stats.rows, stats.dead_lettered) == (3, 1)
    [dead] = store.dead_letters()
    assert dead.uri is None and dead.reason.startswith("export: undecodable output row")
    assert pads.dataset(tmp_path / "out", partitioning="hive").count_rows() == 3
    assert store.status().dead_undecodable_rows == 1  # kept whole, with its bytes


def test_queue_file_deleted_or_replaced_mid_run_stops_writes(tmp_path):
    store = Store(tmp_path, NAME)
    store.enqueue(make_posts(4))
    [b] = store.claim(1)
    os.remove(store.path)
    with pytest.raises(QueueFileError, match=str(store.path)):
        complete(store, b, {p["uri"]: {"label": 1} for p in posts_of(b)}, {})
    Store(tmp_path, NAME).close()  # a new file at the same path
    with pytest.raises(QueueFileError, match="replaced"):
        store.enqueue(make_posts(2, start=100))


def test_corrupt_queue_file_and_file_as_data_dir_name_the_path(tmp_path):
    path = tmp_path / "queue" / f"{NAME}.db"
    path.parent.mkdir()
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(QueueFileError, match=str(path)):
        Store(tmp_path, NAME)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(QueueFileError, match="data_dir must be a writable folder"):
        Store(not_a_dir, NAME)
    with pytest.raises(QueueFileError, match="no queue file"):
        Store(tmp_path / "empty", NAME, readonly=True)
    assert not (tmp_path / "empty").exists()
    assert isinstance(sqlite3.sqlite_version, str)


def _open_at(data_dir: str, start: float) -> str:
    while time.time() < start:  # every process opens the new file at the same moment
        pass
    try:
        Store(data_dir, NAME).close()
        return "ok"
    except Exception as exc:  # noqa: BLE001 - reported to the test
        return f"{type(exc).__name__}: {exc}"


def test_processes_creating_the_queue_file_at_once_all_get_it(tmp_path):
    """A QueueActor and the enqueue beside it (or two commands) create a fresh queue file at
    the same moment: none may fail with 'database is locked'."""
    import multiprocessing

    errors = []
    with multiprocessing.get_context("fork").Pool(8) as pool:
        for round_ in range(15):
            start = time.time() + 0.2
            errors += [r for r in pool.starmap(_open_at, [(str(tmp_path / str(round_)), start)]
                                               * 8) if r != "ok"]
    assert errors == []


def _being_created(path: Path) -> sqlite3.Connection:
    """The queue file as another command holds it while creating it: WAL on, the tables
    made in a transaction not yet committed (what ``Store`` does when it creates one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    return conn


@pytest.mark.parametrize("state", ["empty file", "being created"])
def test_reading_a_queue_file_not_created_yet_says_nothing_is_queued(tmp_path, state):
    """A reader (a second command's preflight, a report, a status poll) that opens the file
    while another command is creating it was told the file "cannot be used; move the file
    away". The file is fine: there is no queue in it yet, which is what it must say."""
    from jobs.stages.preflight import check_queue_file
    from tests.pipeline_helpers import pipeline_config

    path = tmp_path / "queue" / f"{NAME}.db"
    holder = None
    if state == "empty file":  # the moment between sqlite3.connect and the schema
        path.parent.mkdir()
        path.touch()
    else:
        holder = _being_created(path)
    with pytest.raises(NoQueueError, match=f"nothing was enqueued for {NAME!r}"):
        Store(tmp_path, NAME, readonly=True)
    check_queue_file(pipeline_config(tmp_path), NAME)  # nothing to check yet: not an error
    if holder is not None:
        holder.execute("ROLLBACK")
        holder.close()
    store = Store(tmp_path, NAME)  # the creator (or the next one) makes the queue
    store.enqueue(make_posts(3))
    assert Store(tmp_path, NAME, readonly=True).status().pending_posts == 3
