"""Queue-store throughput and memory at 100k and 1M posts (prints JSON; not a test).

Each size runs in a fresh process so its peak RSS is its own. Side by side, in the same run:
the same workload done the old tool's way (no validation at enqueue; load every pending row,
build labels, write outputs, delete inputs).

    python benchmarks/queue_bench.py [--sizes 100000 1000000]
"""
from __future__ import annotations

import argparse
import json
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.config import QueueConfig  # noqa: E402
from queue_store import QueueStore, codec, export_output  # noqa: E402
from queue_store.location import Location  # noqa: E402
from queue_store.models import Ack  # noqa: E402
from queue_store.staging import stage  # noqa: E402

CHUNK = 20_000  # posts generated (and handed to enqueue) at a time, like the enqueue stage


def post_chunks(n: int):
    words = "people group vote city team policy friends coffee rain match".split()
    for start in range(0, n, CHUNK):
        idx = range(start, min(n, start + CHUNK))
        yield pa.table({
            "uri": [f"at://did:plc:{i % 9973:06d}/app.bsky.feed.post/{i:012d}" for i in idx],
            "text": [" ".join(words[(i + k) % 10] for k in range(8 + i % 40)) for i in idx],
            "preprocessing_timestamp": [f"2024-10-{1 + i % 7:02d}-12:{i % 60:02d}:00"
                                        for i in idx],
        })


def run_ours(n: int, data_dir: str) -> dict:
    q = QueueConfig()  # the shipped defaults
    store = QueueStore(data_dir, "bench", max_attempts=q.max_attempts)
    t_enq = 0.0
    for chunk in post_chunks(n):
        t0 = time.perf_counter()
        store.enqueue(chunk, q.batch_size, config_hash="")
        t_enq += time.perf_counter() - t0
    out = Location.of(Path(data_dir) / "out")
    t0 = time.perf_counter()
    done = 0
    while batches := store.claim(8, q.lease_seconds, "bench", config_hash=""):
        tables = []  # typed label columns beside the posts, as the writer stages them
        for b in batches:
            posts = pa.Table.from_batches([codec.loads_posts(b.payload)])
            rows = posts.num_rows
            tables.append(posts.append_column("label", pa.array(np.ones(rows, np.int64)))
                          .append_column("prob_intergroup", pa.array(np.full(rows, 0.9))))
        acks = [Ack(batch_id=b.batch_id, lease_id=b.lease_id, labelled=t.num_rows)
                for b, t in zip(batches, tables)]
        staged, _ = stage(store, out, "bench", acks, tables)  # the claim's labels, once
        done += store.complete(acks, staged).labelled
    t_cc = time.perf_counter() - t0
    t0 = time.perf_counter()
    published = export_output(store, out, q.batch_size).rows  # the renames into place
    t_pub = time.perf_counter() - t0
    assert done == published == n, (done, published, n)
    return {"enqueue_posts_per_s": round(n / t_enq), "claim_complete_posts_per_s": round(n / t_cc),
            "publish_posts_per_s": round(n / t_pub)}


def run_old_tool(n: int, data_dir: str) -> dict:
    """What the tool we replace does: unvalidated inserts, then load-all/write/delete."""
    conn = sqlite3.connect(str(Path(data_dir) / "old.db"))
    conn.execute("CREATE TABLE input (id INTEGER PRIMARY KEY, payload TEXT, metadata TEXT, "
                 "status TEXT DEFAULT 'pending')")
    conn.execute("CREATE TABLE output (id INTEGER PRIMARY KEY, payload TEXT, metadata TEXT)")
    t_enq = 0.0
    for chunk in post_chunks(n):
        t0 = time.perf_counter()
        rows = chunk.to_pylist()
        conn.executemany("INSERT INTO input (payload, metadata) VALUES (?, ?)",
                         [(json.dumps(rows[i:i + 1000]), json.dumps({"batch_size": 1000}))
                          for i in range(0, len(rows), 1000)])
        conn.commit()
        t_enq += time.perf_counter() - t0
    t0 = time.perf_counter()
    loaded = conn.execute("SELECT id, payload FROM input WHERE status = 'pending'").fetchall()
    posts = [(i, json.loads(p)) for i, p in loaded]
    for i, batch in posts:
        out = [{**p, "label": 1, "prob_intergroup": 0.9} for p in batch]
        conn.execute("INSERT INTO output (payload, metadata) VALUES (?, '{}')", (json.dumps(out),))
        conn.execute("DELETE FROM input WHERE id = ?", (i,))
    conn.commit()
    t_cc = time.perf_counter() - t0
    return {"enqueue_posts_per_s": round(n / t_enq), "claim_complete_posts_per_s": round(n / t_cc)}


def child(kind: str, n: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        figures = (run_ours if kind == "ours" else run_old_tool)(n, d)
    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(figures))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--child", nargs=2, metavar=("KIND", "N"))
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], int(args.child[1]))
    results: dict = {}
    for n in args.sizes:
        for kind in ("ours", "old_tool"):
            out = subprocess.run([sys.executable, __file__, "--child", kind, str(n)],
                                 check=True, capture_output=True, text=True).stdout
            results.setdefault(str(n), {})[kind] = json.loads(out)
    small, large = str(min(args.sizes)), str(max(args.sizes))
    ours, old = results[large]["ours"], results[large]["old_tool"]
    summary = {
        "enqueue_vs_old": round(ours["enqueue_posts_per_s"] / old["enqueue_posts_per_s"], 2),
        "claim_complete_vs_old": round(ours["claim_complete_posts_per_s"]
                                       / old["claim_complete_posts_per_s"], 2),
        "peak_rss_large_over_small": round(results[large]["ours"]["peak_rss_mb"]
                                           / results[small]["ours"]["peak_rss_mb"], 2),
        "targets": {"enqueue_posts_per_s": 375_000, "claim_complete_posts_per_s": 170_000,
                    "peak_rss_large_over_small": 1.5},
    }
    print(json.dumps({"results": results, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
