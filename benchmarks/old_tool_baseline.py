"""What the tool we replace does, for side-by-side figures: read the posts, insert them as
1000-post JSON rows (no validation), load every pending row into memory, build label dicts,
write 1000-post JSON output rows, delete the inputs, then write the outputs to parquet."""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pandas as pd
import pyarrow.dataset as pads


def _insert(posts: Path, conn: sqlite3.Connection) -> int:
    """The old tool's enqueue: every post as JSON in 1000-post rows, no validation or dedupe."""
    conn.execute("CREATE TABLE input (id INTEGER PRIMARY KEY, payload TEXT, metadata TEXT, "
                 "status TEXT DEFAULT 'pending')")
    cols = ["uri", "text", "preprocessing_timestamp"]
    n = 0
    for batch in pads.dataset(posts, partitioning="hive").to_batches(columns=cols,
                                                                     batch_size=50_000):
        rows = batch.to_pylist()
        n += len(rows)
        conn.executemany("INSERT INTO input (payload, metadata) VALUES (?, ?)",
                         [(json.dumps(rows[i:i + 1000]), json.dumps({"batch_size": 1000}))
                          for i in range(0, len(rows), 1000)])
    conn.commit()
    return n


def old_tool_insert(posts: Path, work: Path) -> dict:
    """The old tool's queue insert alone (reading the posts included, as in ours)."""
    t0 = time.perf_counter()
    n = _insert(posts, sqlite3.connect(str(work / "old_insert.db")))
    total = time.perf_counter() - t0
    return {"posts": n, "total_s": round(total, 2), "posts_per_s": round(n / total)}


def old_tool_backfill(posts: Path, work: Path) -> dict:
    t0 = time.perf_counter()
    conn = sqlite3.connect(str(work / "old.db"))
    _insert(posts, conn)
    conn.execute("CREATE TABLE output (id INTEGER PRIMARY KEY, payload TEXT, metadata TEXT)")
    loaded = [(i, json.loads(p)) for i, p in
              conn.execute("SELECT id, payload FROM input WHERE status = 'pending'")]
    n = 0
    for i, batch_posts in loaded:
        out = [{**p, "was_successfully_labeled": True, "label": "constant"} for p in batch_posts]
        conn.execute("INSERT INTO output (payload, metadata) VALUES (?, '{}')", (json.dumps(out),))
        conn.execute("DELETE FROM input WHERE id = ?", (i,))
        n += len(out)
    conn.commit()
    frames = [pd.DataFrame(json.loads(p)) for (p,) in conn.execute("SELECT payload FROM output")]
    pd.concat(frames).to_parquet(work / "old_output.parquet")
    total = time.perf_counter() - t0
    return {"posts": n, "total_s": round(total, 2), "posts_per_s": round(n / total)}
