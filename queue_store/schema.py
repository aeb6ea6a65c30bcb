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
# The layout version of a queue file, stored in its meta table. A file of another version is
# refused with one line (no second code path for old layouts).
FORMAT = "3"


class QueueFileError(ValueError):
    """The queue file (or its folder) cannot be used; the message names the path."""


class NoQueueError(QueueFileError):
    """No queue in this data_dir for the integration yet: no file, or one another command is
    creating right now (its tables not committed yet). A reader treats it as empty."""


def no_queue(path: Path, integration: str, creating: bool = False) -> NoQueueError:
    where = (f"no queue in {path} yet (another command may be creating it)" if creating
             else f"no queue file at {path}")
    return NoQueueError(f"{where}: nothing was enqueued for {integration!r} in this data_dir")


class QueueBusyError(QueueFileError):
    """The verb needs a queue no run is working on; the message says what holds it."""


def file_identity(path: Path) -> tuple[int, int]:
    """(device, inode) of the queue file: a deleted or replaced file gets another one."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise QueueFileError(f"queue file {path} vanished during the run ({exc.strerror}); "
                             "it must stay in place while a run uses it") from None
    return st.st_dev, st.st_ino


PAGE_SIZE = 65_536
# How much WAL a writing connection lets pile up before it checkpoints (pages), and what the
# WAL is cut back to once a checkpoint is done: SQLite's 1000 pages are 64 MiB at this page
# size, and a WAL never shrinks by itself. Measured on 1M posts streaming through a run:
# the WAL peaked at 73 MB beside a 33 MB queue file.
WAL_CHECKPOINT_PAGES = 128
WAL_KEEP_BYTES = WAL_CHECKPOINT_PAGES * PAGE_SIZE


def table_names(integration: str) -> dict[str, str]:
    name = check_name(integration)
    return {
        "input": f"input_{name}",
        "output": f"output_{name}",
        "dead": f"dead_{name}",
        "exports": f"exports_{name}",
        "files": f"files_{name}",
        "versions": f"versions_{name}",
        "ledger_runs": f"ledger_runs_{name}",
    }


def _ddl(t: dict[str, str]) -> list[str]:
    return [
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        # ``version`` is the config_hash a batch was queued for: only a run of that version
        # claims it, so a post is labelled once per (uri, config_hash).
        f"""CREATE TABLE IF NOT EXISTS {t['input']} (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            payload BLOB NOT NULL,
            metadata TEXT NOT NULL,
            n_posts INTEGER NOT NULL,
            version TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','processing')),
            lease_id TEXT,
            lease_owner TEXT,
            lease_expires REAL,
            attempt INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL)""",
        f"CREATE INDEX IF NOT EXISTS {t['input']}_pending ON {t['input']}(version, id) "
        "WHERE status = 'pending'",
        # The leases, with their holders: every claim reaps, and asks who holds what, from
        # this index alone. Read from the rows, each holder sits past its batch's payload
        # (overflow pages to walk): measured 9.3 ms a claim with 500 batches leased, 45 us
        # from the index. (Files made before had the index without the holder.)
        f"DROP INDEX IF EXISTS {t['input']}_leased",
        f"CREATE INDEX IF NOT EXISTS {t['input']}_leases ON {t['input']}(lease_expires, "
        "lease_owner) WHERE status = 'processing'",
        # The counts per version and state and the next expiry (status reads, a run's
        # remaining posts, polled every second) from the index alone, not from rows behind
        # their payloads: measured at 600 batches 38 ms -> 0.3 ms, and it grew with the queue.
        f"CREATE INDEX IF NOT EXISTS {t['input']}_counts ON {t['input']}(version, status, "
        "n_posts, lease_expires)",
        f"""CREATE TABLE IF NOT EXISTS {t['output']} (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            batch_id INTEGER NOT NULL,
            version TEXT NOT NULL,
            payload BLOB NOT NULL,
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
            payload BLOB NOT NULL,
            decodable INTEGER NOT NULL,
            reason TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            version TEXT NOT NULL,
            source_batch_id INTEGER,
            created_at REAL NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS {t['exports']} (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            state TEXT NOT NULL CHECK (state IN ('planned','written')),
            n_rows INTEGER NOT NULL,
            created_at REAL NOT NULL)""",
        # The labelled files of completions (``StagedOutput``): a file is recorded by the
        # transaction that completes its batches, staged until it is published into the
        # output, then kept as a marker of what the output holds (``output`` rows are only
        # those of queue files written before: still exported). Added to older files of
        # this format when they are opened for writing.
        f"""CREATE TABLE IF NOT EXISTS {t['files']} (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            version TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('staged','published')),
            stem TEXT NOT NULL UNIQUE,
            files TEXT NOT NULL,
            n_rows INTEGER NOT NULL,
            created_at REAL NOT NULL)""",
        f"CREATE INDEX IF NOT EXISTS {t['files']}_staged ON {t['files']}(id) "
        "WHERE state = 'staged'",
        # The config_hashes posts were queued for, as the small ids ledger entries carry.
        f"""CREATE TABLE IF NOT EXISTS {t['versions']} (
            vid INTEGER PRIMARY KEY,
            version TEXT NOT NULL UNIQUE)""",
        # The ledger's run files (``ledger.py``): a file is part of the ledger once a
        # committed transaction names it here.
        f"""CREATE TABLE IF NOT EXISTS {t['ledger_runs']} (
            name TEXT PRIMARY KEY,
            n INTEGER NOT NULL)""",
    ]


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                        (name,)).fetchone() is not None


def _check_format(conn: sqlite3.Connection, path: Path, t: dict[str, str]) -> bool:
    """A file written in another layout is refused, naming the way out. Returns whether the
    queue's tables are there (False: a new file, or one another command is creating — its
    creator commits every table at once)."""
    if not has_table(conn, t["input"]):
        return False
    row = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone() \
        if has_table(conn, "meta") else None
    found = row[0] if row else "1"
    if found != FORMAT:
        raise QueueFileError(
            f"queue file {path} was written by another version of this tool (queue format "
            f"{found}, this one reads {FORMAT}); finish it with that version (its exported "
            "parquet stays valid), or move the file away to start a new queue")
    return True


def connect(path: Path, integration: str, readonly: bool = False,
            busy_ms: int = BUSY_TIMEOUT_MS) -> tuple[sqlite3.Connection, str]:
    """``_connect`` with every failure turned into one line that names the file.
    ``busy_ms``: how long a statement waits for another process's write lock."""
    if readonly and not path.is_file():
        raise no_queue(path, integration)
    try:
        return _connect_when_free(path, integration, readonly, busy_ms)
    except (FileExistsError, NotADirectoryError, PermissionError) as exc:
        raise QueueFileError(f"cannot create the queue file {path} ({exc.strerror}); "
                             "data_dir must be a writable folder") from None
    except sqlite3.DatabaseError as exc:
        raise storage_error(path, exc) from None


def storage_error(path: Path, exc: sqlite3.Error) -> QueueFileError:
    """One line for a queue file SQLite cannot use: a full disk, a read-only or failing one,
    or a corrupt file (the true cause, never a failed ROLLBACK after it)."""
    text = str(exc)
    if "full" in text:
        return QueueFileError(f"queue file {path}: the disk is full ({text}); free space on "
                              f"{path.parent} and rerun: nothing is lost")
    if "readonly" in text or "read-only" in text:
        return QueueFileError(f"queue file {path} cannot be written ({text}); data_dir must "
                              "be a writable folder on a local disk")
    if "I/O" in text:
        return QueueFileError(f"queue file {path}: disk I/O error ({text}); check the disk "
                              "under data_dir and rerun")
    return QueueFileError(f"queue file {path} cannot be used ({text}); move the file away "
                          "(or fix data_dir) and rerun")


def _connect_when_free(path: Path, integration: str, readonly: bool,
                       busy_ms: int) -> tuple[sqlite3.Connection, str]:
    """``_connect``, retried while another process holds the lock it needs: switching a new
    file to WAL answers "database is locked" at once, without SQLite's busy wait, when
    several processes open it at the same moment (two commands, or a QueueActor and the
    enqueue running beside it)."""
    deadline = time.monotonic() + busy_ms / 1000
    while True:
        try:
            return _connect(path, integration, readonly, busy_ms)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.01, 0.1))


def _connect(path: Path, integration: str, readonly: bool,
             busy_ms: int) -> tuple[sqlite3.Connection, str]:
    """Open (creating if needed) the queue file; returns the connection and the store's id.

    The store id is a random value fixed at creation: parquet file names include it so a
    re-created queue file can never overwrite files exported from an earlier one. A read-only
    connection never writes (nor creates) anything.
    """
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                               timeout=busy_ms / 1000, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
            if not _check_format(conn, path, table_names(integration)):
                raise no_queue(path, integration, creating=True)
            return conn, conn.execute("SELECT value FROM meta WHERE key = 'store_id'"
                                      ).fetchone()[0]
        except BaseException:
            conn.close()
            raise
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=busy_ms / 1000,
                           check_same_thread=False)
    try:
        return conn, _create_tables(conn, path, integration, busy_ms)
    except BaseException:
        conn.close()
        raise


def _create_tables(conn: sqlite3.Connection, path: Path, integration: str,
                   busy_ms: int) -> str:
    conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
    tables = table_names(integration)
    _check_format(conn, path, tables)  # before anything (even the journal mode) is changed
    # Rows are whole batches (100 KB+): 64 KiB pages cut overflow-page chains and commit work
    # (measured: enqueue 420k → 780k posts/s, claim+complete 188k → 253k). Applies only when
    # the file is created; it cannot change once the file is in WAL mode.
    conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
    # Free pages (cleared output rows, finished batches) can go back to the file system
    # (``QueueStore.compact``); like the page size, this applies only to a new file.
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
    conn.execute(f"PRAGMA journal_size_limit = {WAL_KEEP_BYTES}")
    conn.execute("BEGIN IMMEDIATE")
    try:
        for stmt in _ddl(tables):
            conn.execute(stmt)
        conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('format', ?)", (FORMAT,))
        conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('store_id', ?)",
                     (uuid.uuid4().hex[:12],))
        store_id = conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0]
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # already rolled back by SQLite (disk full, I/O error)
        raise
    return store_id
