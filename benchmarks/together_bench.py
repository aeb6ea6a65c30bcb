"""Two integrations of one config — the demo's MiniLM model and an OpenAI-compatible hosted
model (a local server with fixed latency) — labelled from scratch, measured side by side in
one run (prints JSON):

(a) one after another, as before: one command per integration (``-i g``, then ``-i h``),
    each reading the posts;
(b) one command without ``-i``: one read of the posts, the two runs side by side.

Each through the CLI in a fresh data dir; the wall time includes starting Ray and the
actors. Both outputs are checked complete.

    python benchmarks/together_bench.py [--posts 2000] [--latency-ms 200] [--concurrency 8]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from hosted_bench import ServerProcess  # noqa: E402
from jobs.tools.demo_data import write_demo  # noqa: E402
from tests.fake_hosted import KEY  # noqa: E402

NAMES = {"g": "ml_inference_intergroup", "h": "ml_inference_intergroup_llm"}


def config(root: Path, posts: Path, server: ServerProcess, concurrency: int) -> Path:
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    demo["posts"]["path"] = str(posts)
    demo["data_dir"] = str(root / "data")
    params = demo["integrations"][NAMES["g"]]["classifier"]["params"]
    params["labels_file"] = str(ROOT / "configs" / "labels" / "intergroup.yaml")
    params["torch_threads"] = 1  # one core each: the model, and the rest of the job
    demo["integrations"][NAMES["h"]] = {
        "code": "h", "batch_size": 500, "num_cpus": 0.25, "actors": {"min": 1, "max": 1},
        "classifier": {"type": "openai_chat", "params": {
            "base_url": server.base_url, "model": "bench", "api_key_env": "BENCH_KEY",
            "prompt_file": str(ROOT / "configs" / "prompts" / "intergroup.yaml"),
            "json_mode": True, "timeout_s": 30, "max_concurrency": concurrency}}}
    path = root / "config.yaml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(demo))
    return path


def backfill(cfg: Path, *flags: str) -> float:
    env = dict(os.environ, BENCH_KEY=KEY, RAY_AUTH_MODE="disabled",
               RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "jobs.backfill", "--config", str(cfg), "-r", "posts",
                    "--add-to-queue", "--run-integrations", "--write-cache", "all", "--quiet",
                    *flags], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def labelled(cfg: Path) -> dict[str, int]:
    import pyarrow.dataset as pads

    data = Path(yaml.safe_load(cfg.read_text())["data_dir"])
    out = {}
    for name in NAMES.values():
        uris = pads.dataset(data / name, partitioning="hive").to_table(
            columns=["uri"]).column("uri")
        assert len(uris) == len(set(uris.to_pylist())), f"{name}: a post labelled twice"
        out[name] = len(uris)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--posts", type=int, default=2000)
    ap.add_argument("--latency-ms", type=float, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="together-bench-"))
    posts = work / "posts"
    write_demo(posts, args.posts, 2, date(2024, 10, 1))
    with ServerProcess(args.latency_ms / 1000) as server:
        apart = config(work / "apart", posts, server, args.concurrency)
        apart_s = backfill(apart, "-i", "g") + backfill(apart, "-i", "h")
        together = config(work / "together", posts, server, args.concurrency)
        together_s = backfill(together)
    counts = labelled(together)
    assert counts == labelled(apart), "the two ways labelled different posts"
    print(json.dumps({
        "posts": args.posts, "labelled_per_integration": counts,
        "hosted_latency_ms": args.latency_ms, "hosted_max_concurrency": args.concurrency,
        "hosted_bound_posts_per_s": round(args.concurrency / (args.latency_ms / 1000), 1),
        "one_after_another_s": round(apart_s, 1), "together_s": round(together_s, 1),
        "speedup": round(apart_s / together_s, 2), "work_dir": str(work),
    }, indent=2))


if __name__ == "__main__":
    main()
