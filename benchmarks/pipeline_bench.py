"""End-to-end pipeline figures, every comparison measured in the same run (prints JSON + table).

    python benchmarks/pipeline_bench.py                       # both parts
    python benchmarks/pipeline_bench.py --parts model --model-posts 3000

model:    the packaged MiniLM through the full pipeline (enqueue + inference in one command)
          vs the same classifier in a plain loop (model load included in both).
Every pipeline run also reports the classifier actors' CPU per post outside ``classify``.
scale:    N posts through enqueue → Ray pipeline → parquet with the ``constant`` classifier at
          several sizes, against the old tool's way (load every pending row, build labels,
          write 1000-post JSON output rows, delete inputs, write parquet) on the same posts;
          wall time and peak private RSS per process role (driver included).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from old_tool_baseline import old_tool_backfill  # noqa: E402
from rss_sampler import RssSampler  # noqa: E402

from jobs.config import parse_config  # noqa: E402
from jobs.stages.enqueue import enqueue_posts  # noqa: E402
from jobs.posts.source import find_post_files  # noqa: E402
from jobs.stages.inference import run_inference  # noqa: E402

NAME = "ml_inference_intergroup"
MODEL_PARAMS = {"labels_file": str(ROOT / "configs" / "labels" / "intergroup.yaml"),
                "torch_threads": 2,
                "mini_batch_size": 64}


def _config(data_dir: Path, posts: Path, classifier: dict, batch_size: int) -> object:
    return parse_config({
        "data_dir": str(data_dir), "posts": {"path": str(posts)},
        "integrations": {NAME: {"code": "g", "classifier": classifier, "batch_size": batch_size,
                                "num_cpus": 1}}})


def _make_posts(root: Path, n: int) -> Path:
    """In a child process, so generating 1M posts does not count in the driver's memory."""
    posts = root / f"posts_{n}"
    if not posts.exists():
        subprocess.run([sys.executable, "-m", "jobs.tools.demo_data", "--posts", str(n),
                        "--days", "7", "--out", str(posts)], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
    return posts


def _pipeline(root: Path, posts: Path, classifier: dict, batch_size: int) -> dict:
    """Enqueue + inference in one command, as ``backfill --add-to-queue --run-integrations``
    runs them: the pipeline (actors, model) starts while the enqueue runs."""
    data = Path(tempfile.mkdtemp(dir=root))
    cfg = _config(data, posts, classifier, batch_size)
    enq: dict = {}

    def feed() -> None:
        t = time.perf_counter()
        enq["summary"] = enqueue_posts(cfg, NAME, find_post_files(str(posts), None, None),
                                       quiet=True)
        enq["s"] = time.perf_counter() - t

    t0 = time.perf_counter()
    run = run_inference(cfg, NAME, quiet=True, feed=feed)
    total = time.perf_counter() - t0
    return {"posts": run.labelled, "enqueue_s": round(enq["s"], 2),
            "inference_s": round(total - enq["s"], 2), "total_s": round(total, 2),
            "posts_per_s": round(run.labelled / total),
            "stage_us_per_post_outside_classify": run.stage_us_per_post,
            "enqueued": enq["summary"].enqueued}


def part_model(root: Path, n: int) -> dict:
    import pyarrow.dataset as pads

    from classifiers.registry import build_classifier
    from queue_store.rows.validation import as_post_table, split_valid

    posts = _make_posts(root, n)
    ours = _pipeline(root, posts, {"type": "embedding_prototypes", "params": MODEL_PARAMS}, 512)
    table = split_valid(as_post_table(pads.dataset(posts, partitioning="hive").to_table())).valid
    texts = table.column("text").to_pylist()
    t0 = time.perf_counter()
    clf = build_classifier("embedding_prototypes", MODEL_PARAMS)
    for i in range(0, len(texts), 512):
        clf.classify(texts[i:i + 512])
    loop_s = time.perf_counter() - t0
    loop = {"posts": len(texts), "total_s": round(loop_s, 2),
            "posts_per_s": round(len(texts) / loop_s, 1)}
    return {"ours": ours, "plain_loop": loop,
            "ratio": round(ours["posts_per_s"] / loop["posts_per_s"], 2), "target": 0.9}


def part_scale(root: Path, sizes: list[int]) -> dict:
    """The constant classifier at each size: our whole flow against the old tool's on the
    same posts (ratio), wall time, and peak private RSS per process role."""
    out = {}
    for n in sizes:
        posts = _make_posts(root, n)
        with RssSampler() as rss:
            res = _pipeline(root, posts, {"type": "constant"}, 1000)
        res["us_per_post"] = round(res["total_s"] / max(res["posts"], 1) * 1e6, 1)
        res["peak_private_rss_mb"] = rss.peaks_mb()
        old = old_tool_backfill(posts, Path(tempfile.mkdtemp(dir=root)))
        res["old_tool_posts_per_s"] = old["posts_per_s"]
        res["ratio_to_old_tool"] = round(res["posts_per_s"] / old["posts_per_s"], 2)
        res["target_ratio"] = 1.0 if n >= 1_000_000 else 0.5 if n >= 200_000 else None
        out[str(n)] = res
        print(f"scale {n}: {res['total_s']}s, {res['ratio_to_old_tool']}x old tool, peaks "
              f"{res['peak_private_rss_mb']}", file=sys.stderr)
    small, large = str(min(sizes)), str(max(sizes))
    key = "peak_private_rss_mb"
    growth = {role: round(mb / out[small][key][role], 2)
              for role, mb in out[large][key].items() if role in out[small][key]}
    return {"runs": out, "peak_private_rss_large_over_small": growth,
            "time_per_post_large_over_small": round(out[large]["us_per_post"]
                                                    / out[small]["us_per_post"], 2),
            "target_peak_ratio": 1.5}


def main() -> None:
    ap = argparse.ArgumentParser()
    # scale first: its driver RSS must not include the model the model part loads in-process
    ap.add_argument("--parts", nargs="+", default=["scale", "model"])
    ap.add_argument("--model-posts", type=int, default=3000)
    ap.add_argument("--scale", type=int, nargs="+", default=[10_000, 200_000, 1_000_000])
    args = ap.parse_args()
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=500_000_000,
             log_to_driver=False)
    results: dict = {"ray_init_s": round(time.perf_counter() - t0, 2)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        parts = {"model": lambda: part_model(root, args.model_posts),
                 "scale": lambda: part_scale(root, args.scale)}
        for part in args.parts:
            results[part] = parts[part]()
    ray.shutdown()
    print(json.dumps(results, indent=2))
    if "model" in results:
        r = results["model"]
        print(f"model     ours {r['ours']['posts_per_s']:>8} posts/s | plain_loop "
              f"{r['plain_loop']['posts_per_s']:>8} posts/s | ratio {r['ratio']} "
              f"(target >= {r['target']}) | stage CPU outside classify "
              f"{r['ours']['stage_us_per_post_outside_classify']} us/post (target <= 5)")
    if "scale" in results:
        for n, r in results["scale"]["runs"].items():
            print(f"scale {n:>8}: {r['total_s']:>7}s {r['posts_per_s']:>7} posts/s | old tool "
                  f"{r['old_tool_posts_per_s']:>7} posts/s | ratio {r['ratio_to_old_tool']} "
                  f"(target >= {r['target_ratio']}) | stage outside classify "
                  f"{r['stage_us_per_post_outside_classify']} us/post (target <= 5) | "
                  f"peak private MB {r['peak_private_rss_mb']}")
        print("peak growth, largest over smallest:",
              results["scale"]["peak_private_rss_large_over_small"])


if __name__ == "__main__":
    main()
