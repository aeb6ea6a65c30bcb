"""One openai_chat actor against a local OpenAI-compatible server with fixed latency (prints
JSON), next to the original tool's pattern in the same run.

(a) ours: ``classify`` called on blocks of 500 posts (as the pipeline calls it), up to
    ``max_concurrency`` requests in flight on the classifier's own event loop;
(b) the original tool's pattern: blocking batches of 500 posts, each batch's requests issued
    by one synchronous batch call (a thread pool of the default size, as LangChain's
    ``batch()`` uses) and awaited before the next batch.
The latency bound is max_concurrency / latency.

    python benchmarks/hosted_bench.py [--posts 5000] [--latency-ms 50] [--concurrency 64]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from classifiers.registry import build_classifier  # noqa: E402
from tests.fake_hosted import KEY  # noqa: E402

BLOCK = 500
TEMPLATE = "Is this post about relations between groups? Post: {text}"


def ours(server: "ServerProcess", posts: list[str], concurrency: int) -> float:
    os.environ["BENCH_KEY"] = KEY
    clf = build_classifier("openai_chat", {
        "base_url": server.base_url, "model": "bench", "api_key_env": "BENCH_KEY",
        "template": TEMPLATE, "choices": {1: "1", 0: "0"}, "json_mode": True,
        "max_concurrency": concurrency, "timeout_s": 30})
    clf.classify(posts[:concurrency])  # warm-up: connections
    t0 = time.perf_counter()
    for i in range(0, len(posts), BLOCK):
        rows = clf.classify(posts[i:i + BLOCK])
        assert all(isinstance(r, dict) for r in rows)
    return len(posts) / (time.perf_counter() - t0)


def original(server: "ServerProcess", posts: list[str]) -> tuple[float, int]:
    def one(text: str) -> dict:
        body = json.dumps({"model": "bench", "messages": [
            {"role": "user", "content": TEMPLATE.format(text=text)}]}).encode()
        req = urllib.request.Request(f"{server.base_url}/chat/completions", data=body,
                                     headers={"Authorization": f"Bearer {KEY}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    workers = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default size
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i in range(0, len(posts), BLOCK):
            list(pool.map(one, posts[i:i + BLOCK]))  # the batch call blocks until all return
    return len(posts) / (time.perf_counter() - t0), workers


class ServerProcess:
    """The fake server in its own process, so it does not share this one's GIL."""

    def __init__(self, latency_s: float) -> None:
        import subprocess

        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fake_hosted", str(latency_s)],
                                     cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.port = int(self.proc.stdout.readline())

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--posts", type=int, default=5000)
    ap.add_argument("--latency-ms", type=float, default=50)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    posts = [f"post {i} about {'groups' if i % 3 else 'my day'}" for i in range(args.posts)]
    with ServerProcess(args.latency_ms / 1000) as server:
        a = ours(server, posts, args.concurrency)
        b, workers = original(server, posts[: max(BLOCK, args.posts // 5)])
    bound = args.concurrency / (args.latency_ms / 1000)
    print(json.dumps({
        "posts": args.posts, "latency_ms": args.latency_ms,
        "max_concurrency": args.concurrency, "latency_bound_posts_per_s": round(bound, 1),
        "ours_posts_per_s": round(a, 1), "ours_over_bound": round(a / bound, 3),
        "target_over_bound": 0.8,
        "original_pattern_posts_per_s": round(b, 1), "original_pattern_threads": workers,
        "ours_over_original": round(a / b, 2),
    }, indent=2))


if __name__ == "__main__":
    main()
