"""Posts whose text compresses about as real posts do, for the queue file's bytes per post
(``scale_bench.py --posts``): English prose (sentences of the standard library's docstrings,
each used once before any repeats) and random Bluesky-shaped uris, 7 days of them. The demo's
posts are built from a few phrases and compress several times better than real text.

    python benchmarks/prose_posts.py 1000000 /tmp/prose_posts
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

MODULES = ("os json argparse collections asyncio email http.client logging subprocess "
           "threading unittest urllib.request xml.dom.minidom decimal datetime pathlib random "
           "statistics typing inspect pickle socket ssl tarfile zipfile csv sqlite3 shutil "
           "tempfile textwrap").split()
BASE32 = "abcdefghijklmnopqrstuvwxyz234567"


def sentences() -> list[str]:
    found: list[str] = []
    for name in MODULES:
        for _, obj in inspect.getmembers(importlib.import_module(name)):
            doc = inspect.getdoc(obj)
            if doc:
                found += [s for s in re.split(r"(?<=[.!?])\s+", " ".join(doc.split()))
                          if 20 <= len(s) <= 280]
    return list(dict.fromkeys(found))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("posts", type=int)
    ap.add_argument("out", type=Path)
    ap.add_argument("--days", type=int, default=7)
    args = ap.parse_args()
    pool_of, rng, pool = sentences(), random.Random(0), []
    for d in range(args.days):
        rows: dict[str, list[str]] = {"uri": [], "text": [], "preprocessing_timestamp": []}
        for i in range(d, args.posts, args.days):
            if len(pool) < 2:
                pool = pool_of[:]
                rng.shuffle(pool)
            rows["uri"].append(f"at://did:plc:{''.join(rng.choices(BASE32, k=24))}"
                               f"/app.bsky.feed.post/{''.join(rng.choices(BASE32, k=13))}")
            rows["text"].append(pool.pop() if i % 2 else f"{pool.pop()} {pool.pop()}")
            rows["preprocessing_timestamp"].append(
                f"2024-10-{d + 1:02d}-{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00")
        folder = args.out / f"partition_date=2024-10-{d + 1:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(rows), folder / "posts.parquet")


if __name__ == "__main__":
    main()
