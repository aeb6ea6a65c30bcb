"""llm_prompt throughput with and without the shared-prompt cache, same run (prints JSON).

The shipped intergroup prompt on demo posts, a random-weight causal LM with realistic
proportions (Qwen2-style; the tokenizer is the tests' small BPE one, so the vocabulary is
small and the prompt splits into more tokens than a real tokenizer would make).

    python benchmarks/llm_bench.py [--posts 1000] [--layers 4] [--hidden 512]
    python benchmarks/llm_bench.py --shape qwen2.5-0.5b --device cuda --precision bf16
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from classifiers.registry import build_classifier  # noqa: E402
from jobs.tools.demo_data import make_text  # noqa: E402
from tests.tiny_llm import save_tiny_llm  # noqa: E402

SHAPES = {  # name: layers, hidden, heads, kv heads (random weights: speed only)
    "cpu-small": (4, 512, 8, 2),
    "qwen2.5-0.5b": (24, 896, 14, 2),
}


def timed(clf: Any, posts: list[str], use_cache: bool) -> float:
    clf.choice_logprobs(posts[:32], use_cache=use_cache)  # warm-up
    if clf.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    clf.choice_logprobs(posts, use_cache=use_cache)
    if clf.device.type == "cuda":
        torch.cuda.synchronize()
    return len(posts) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--posts", type=int, default=1000)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="cpu-small")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--mini-batch-size", type=int, default=32)
    ap.add_argument("--no-full", action="store_true", help="skip the uncached comparison")
    args = ap.parse_args()
    layers, hidden, heads, kv = SHAPES[args.shape]
    rng = random.Random(0)
    posts = [make_text(rng) for _ in range(args.posts)]
    with tempfile.TemporaryDirectory() as tmp:
        path = save_tiny_llm(Path(tmp) / "lm", layers=layers, hidden=hidden, heads=heads,
                             kv_heads=kv)
        clf = build_classifier("llm_prompt", {
            "model": path, "prompt_file": str(ROOT / "configs" / "prompts" / "intergroup.yaml"),
            "chat": True, "device": args.device, "precision": args.precision,
            "mini_batch_size": args.mini_batch_size, "torch_threads": 2})
        post_tokens = [len(clf.tokenizer(p, add_special_tokens=False)["input_ids"])
                       for p in posts]
        cached = timed(clf, posts, use_cache=True)
        full = None if args.no_full else timed(clf, posts, use_cache=False)
    print(json.dumps({
        "posts": args.posts, "shape": args.shape, "layers": layers, "hidden": hidden,
        "device": str(clf.device), "precision": args.precision,
        "mini_batch_size": args.mini_batch_size,
        "prompt_tokens": len(clf.pieces.prefix), "suffix_tokens": len(clf.pieces.suffix),
        "mean_post_tokens": round(sum(post_tokens) / len(post_tokens), 1),
        "posts_per_s_cached": round(cached, 1),
        "posts_per_s_full_prompt": None if full is None else round(full, 1),
        "cached_over_full": None if full is None else round(cached / full, 2),
        "target_ratio": 5.0,
    }, indent=2))


if __name__ == "__main__":
    main()
