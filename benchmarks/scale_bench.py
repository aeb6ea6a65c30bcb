"""Ten million posts on one head node: what a full backfill costs per post, and what it leaves
on disk (prints JSON + a table).

    python benchmarks/scale_bench.py                        # 1M and 10M (~25 min, ~6 GB disk)
    python benchmarks/scale_bench.py --sizes 100000 1000000
    python benchmarks/scale_bench.py --sizes 1000000 --posts /tmp/prose_posts   # your posts

Per size, in a fresh data dir: the posts (7 days of demo data), then one command's enqueue
streaming into inference with the no-op ``constant`` classifier (parquet exported as it goes),
then ``--write-cache --clear-queue`` (export, clear, free pages handed back), then
``--compact-queue``. Printed: wall time and posts/s of each step, peak private memory of each
process role, the queue file (+ WAL) and the ledger's bytes per post after each step and at
their peak during the run, and the ratios of the largest size to the smallest.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from pipeline_bench import BATCH, NAME, _config, _make_posts, _pipeline  # noqa: E402
from rss_sampler import RssSampler, Sampler  # noqa: E402

from jobs.stages.write_cache import write_cache  # noqa: E402
from queue_store import QueueStore  # noqa: E402


class DiskPeak(Sampler):
    """The largest queue file + WAL (and ledger) seen while the ``with`` block runs."""

    def __init__(self, data_dir: Path, interval: float = 0.5) -> None:
        super().__init__(interval)
        self.queue = data_dir / "queue" / f"{NAME}.db"
        self.peak_file = self.peak_ledger = 0

    def sample(self) -> None:
        if not self.queue.exists():
            return
        file_bytes = sum(p.stat().st_size for p in (
            self.queue, self.queue.with_name(self.queue.name + "-wal")) if p.exists())
        try:
            ledger = sum(p.stat().st_size for p in self.queue.with_suffix(".ledger").iterdir())
        except FileNotFoundError:
            ledger = 0
        self.peak_file = max(self.peak_file, file_bytes)
        self.peak_ledger = max(self.peak_ledger, ledger)


def _on_disk(data_dir: Path, n: int) -> dict:
    store = QueueStore(data_dir, NAME, readonly=True)
    try:
        st = store.status()
    finally:
        store.close()
    return {"queue_file_bytes_per_post": round(st.file_bytes / n, 1),
            "ledger_bytes_per_post": round(st.ledger_bytes / n, 1),
            "both_bytes_per_post": round((st.file_bytes + st.ledger_bytes) / n, 1)}


def one_size(root: Path, n: int, posts: Path | None = None) -> dict:
    """``posts``: a posts folder to use instead of ``n`` demo posts (``n`` is its size)."""
    posts = posts or _make_posts(root, n)
    data = Path(tempfile.mkdtemp(dir=root))
    with RssSampler() as rss, DiskPeak(data) as disk:
        run = _pipeline(root, posts, {"type": "constant"}, BATCH, data=data)
        run.pop("data_dir")
        after_run = _on_disk(data, n)
        cfg = _config(data, posts, {"type": "constant"}, BATCH)
        t0 = time.perf_counter()
        write_cache(cfg, NAME, clear_queue=True)
        export_s = time.perf_counter() - t0
        after_clear = _on_disk(data, n)
        t0 = time.perf_counter()
        store = QueueStore(data, NAME, max_attempts=cfg.queue.max_attempts)
        try:
            store.compact(full=True)
        finally:
            store.close()
        compact_s = time.perf_counter() - t0
        after_compact = _on_disk(data, n)
    total = run["total_s"] + export_s
    return {"posts": n, "labelled": run["posts"], "enqueue_and_inference_s": run["total_s"],
            "export_clear_s": round(export_s, 2), "compact_s": round(compact_s, 2),
            "posts_per_s": round(n / total), "us_per_post": round(total / n * 1e6, 2),
            "enqueue_posts_per_s": run["enqueue_posts_per_s"],
            "cpu_us_per_post": run["cpu_us_per_post"],
            "peak_private_rss_mb": rss.peaks_mb(),
            "peak_bytes_per_post_during_run": {
                "queue_file": round(disk.peak_file / n, 1),
                "ledger": round(disk.peak_ledger / n, 1)},
            "after_run": after_run, "after_export_and_clear": after_clear,
            "after_compact_queue": after_compact}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--dir", help="work folder (default: a temporary one, removed after)")
    ap.add_argument("--posts", type=Path, help="posts to use instead of the demo's (one size: "
                    "their number), e.g. benchmarks/prose_posts.py's")
    args = ap.parse_args()
    if args.posts and len(args.sizes) != 1:
        ap.error("--posts takes one --sizes: the number of those posts")
    import ray

    out: dict = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=500_000_000,
                 log_to_driver=False)
        for n in args.sizes:
            out[str(n)] = one_size(Path(tmp), n, args.posts)
            print(f"{n}: {out[str(n)]['posts_per_s']} posts/s", file=sys.stderr)
        ray.shutdown()
    small, large = out[str(min(args.sizes))], out[str(max(args.sizes))]
    ratios = {
        "us_per_post": round(large["us_per_post"] / small["us_per_post"], 2),
        "bytes_per_post_after_clear": round(
            large["after_export_and_clear"]["both_bytes_per_post"]
            / small["after_export_and_clear"]["both_bytes_per_post"], 2),
        "peak_private_rss": {role: round(mb / small["peak_private_rss_mb"][role], 2)
                             for role, mb in large["peak_private_rss_mb"].items()
                             if small["peak_private_rss_mb"].get(role)}}
    result = {"sizes": out, "largest_over_smallest": ratios,
              "targets": {"bytes_per_post_after_clear": 40, "bytes_ratio": 1.1,
                          "us_per_post_ratio": 1.2, "rss_ratio": 1.2}}
    print(json.dumps(result, indent=2))
    for n, r in out.items():
        print(f"{int(n):>10,} posts: {r['posts_per_s']:>7} posts/s ({r['us_per_post']} µs/post) "
              f"| after export+clear {r['after_export_and_clear']['both_bytes_per_post']} B/post"
              f" (queue file {r['after_export_and_clear']['queue_file_bytes_per_post']}, "
              f"ledger {r['after_export_and_clear']['ledger_bytes_per_post']}) | peak during "
              f"run {r['peak_bytes_per_post_during_run']} B/post | peak MB "
              f"{r['peak_private_rss_mb']}")
    print("largest/smallest:", ratios)


if __name__ == "__main__":
    main()
