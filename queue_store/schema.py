"""SQLite layout of one integration's queue file and how to open it safely."""
from __future__ import annotations

import os
import random
import sqlite3
import time
import uuid
from pathlib import Path

from queue_store.names import check_name

BUSY_TIMEOUT_MS = 30_000


class QueueFileError(ValueError):
    """The queue file (or its folder) cannot be used; the message names the path."""


def file_identity(path: Path) -> tuple[int, int]:
    """(device, inode) of the queue file: a deleted or replaced file gets another one."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise QueueFileError(f"queue file {path} vanished during the run ({exc.strerror}); "
                             "it must stay in place while a run uses it") from None
    return st.st_dev, st.st_ino
PAGE_SIZE = 65_536


def table_names(integration: str) -> dict[str, str]:
    name = check_name(integration)
    return {
        "input": f"input_{name}",
        "output": f"output_{name}",
        "dead": f"dead_{name}",
        "exports": f"exports_{name}",
        "ledger": f"ledger_{name}",
        "labelled": f"labelled_{name}",
    }


def _ddl(t: dict[str, str]) -> list[str]:
    return [
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        f"""CREATE TABLE IF NOT EXISTS {t['input']} (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            payload TEXT NOT NULL,
            metadata TEXT NOT NULL,
            n_posts INTEGER NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','processing')),
            lease_id TEXT,
            lease_owner TEXT,
            lease_expires REAL,
            attempt INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL)""",
        f"CREATE INDEX IF NOT EXISTS {t['input']}_pending ON {t['input']}(id) "
        "WHERE status = 'pending'",
        f"CREATE INDEX IF NOT EXISTS {t['input']}_leased ON {t['input']}(lease_expires) "
        "WHERE status = 'processing'",
        f"""CREATE TABLE IF NOT EXISTS {t['output']} (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            batch_id INTEGER NOT NULL,
            payload TEXT NOT NULL,
            n_rows INTEGER NOT NULL,
            export_id INTEGER,
            created_at REAL NOT NULL)""",
        f"CREATE INDEX IF NOT EXISTS {t['output']}_unexported ON {t['output']}(id) "
        "WHERE export_id IS NULL",
        f"CREATE INDEX IF NOT EXISTS {t['output']}_export ON {t['output']}(export_id) "
        "WHERE export_id IS NOT NULL",
        f"""CREATE TABLE IF NOT EXISTS {t['dead']} (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            uri TEXT,
            payload TEXT NOT NULL,
            decodable INTEGER NOT NULL,
            reason TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            source_batch_id INTEGER,
            created_at REAL NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS {t['exports']} (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            state TEXT NOT NULL CHECK (state IN ('planned','written')),
            n_rows INTEGER NOT NULL,
            created_at REAL NOT NULL)""",
        # Every uri ever enqueued for this integration, so "is this post new?" is decided
        # inside the enqueue transaction (concurrent enqueues queue each post once).
        # ``done`` is set when the post's labels reach the output queue.
        # ``version`` is the config_hash the post was (last) enqueued for.
        f"""CREATE TABLE IF NOT EXISTS {t['ledger']} (
            uri TEXT PRIMARY KEY,
            done INTEGER NOT NULL DEFAULT 0,
            version TEXT NOT NULL DEFAULT '') WITHOUT ROWID""",
        # The uris each completed batch labelled (a JSON array per batch), appended by
        # ``complete`` and folded into the ledger's ``done`` by the next enqueue that needs
        # it: marking done in the ledger per batch rewrote most of its 64 KiB pages every
        # time (measured: 18 of the QueueActor's 20 µs per post), an append touches one.
        f"""CREATE TABLE IF NOT EXISTS {t['labelled']} (
            id INTEGER PRIMARY KEY,
            uris TEXT NOT NULL)""",
    ]


def _fill_ledger(conn: sqlite3.Connection, t: dict[str, str]) -> None:
    """Once per file: a queue file made before the ledger existed gets its uris in it."""
    if conn.execute("SELECT 1 FROM meta WHERE key = 'ledger'").fetchone():
        return
    for table, done in ((t["output"], 1), (t["input"], 0)):
        conn.execute(f"INSERT OR IGNORE INTO {t['ledger']} (uri, done) "
                     f"SELECT json_extract(j.value, '$.uri'), {done} FROM {table}, "
                     f"json_each({table}.payload) AS j WHERE json_valid({table}.payload) "
                     "AND json_type(j.value, '$.uri') = 'text'")
    conn.execute(f"INSERT OR IGNORE INTO {t['ledger']} (uri) "
                 f"SELECT uri FROM {t['dead']} WHERE uri IS NOT NULL")
    conn.execute("INSERT INTO meta(key, value) VALUES ('ledger', '1')")


def connect(path: Path, integration: str,
            readonly: bool = False) -> tuple[sqlite3.Connection, str]:
    """``_connect`` with every failure turned into one line that names the file."""
    if readonly and not path.is_file():
        raise QueueFileError(f"no queue file at {path}: nothing was enqueued for "
                             f"{integration!r} in this data_dir")
    try:
        return _connect_when_free(path, integration, readonly)
    except (FileExistsError, NotADirectoryError, PermissionError) as exc:
        raise QueueFileError(f"cannot create the queue file {path} ({exc.strerror}); "
                             "data_dir must be a writable folder") from None
    except sqlite3.DatabaseError as exc:
        raise QueueFileError(f"queue file {path} cannot be used ({exc}); move the file "
                             "away (or fix data_dir) and rerun") from None


def _connect_when_free(path: Path, integration: str,
                       readonly: bool) -> tuple[sqlite3.Connection, str]:
    """``_connect``, retried while another process holds the lock it needs: switching a new
    file to WAL answers "database is locked" at once, without SQLite's busy wait, when
    several processes open it at the same moment (two commands, or a QueueActor and the
    enqueue running beside it)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            return _connect(path, integration, readonly)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.01, 0.1))


def _connect(path: Path, integration: str,
             readonly: bool = False) -> tuple[sqlite3.Connection, str]:
    """Open (creating if needed) the queue file; returns the connection and the store's id.

    The store id is a random value fixed at creation: parquet file names include it so a
    re-created queue file can never overwrite files exported from an earlier one. A read-only
    connection never writes (nor creates) anything.
    """
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                               timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return conn, conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
                           check_same_thread=False)
    try:
        return conn, _create_tables(conn, integration)
    except BaseException:
        conn.close()
        raise


def _create_tables(conn: sqlite3.Connection, integration: str) -> str:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    # Rows are whole batches (100 KB+): 64 KiB pages cut overflow-page chains and commit work
    # (measured: enqueue 420k → 780k posts/s, claim+complete 188k → 253k). Applies only when
    # the file is created; it cannot change once the file is in WAL mode.
    conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        tables = table_names(integration)
        for stmt in _ddl(tables):
            conn.execute(stmt)
        _fill_ledger(conn, tables)
        conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('store_id', ?)",
                     (uuid.uuid4().hex[:12],))
        store_id = conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0]
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return store_id
