"""Classifier throughput on the packaged MiniLM, side by side in one run (prints JSON).

(a) ours: tokenise once, length-sorted mini-batches padded to their longest
(b) the naive loop: tokenise each batch in input order with padding=True
(c) padding="max_length"
plus this machine's measured fp32 matmul GFLOP/s, to express (a) as a roofline fraction.

    python benchmarks/classifier_bench.py [--posts 2000] [--device auto] [--precision auto]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from classifiers.registry import build_classifier  # noqa: E402

WORDS = ("the people group city vote party team policy friends coffee rain match they we our "
         "government immigrants workers fans church neighbours morning happy tired").split()


def synthetic_posts(n: int, seed: int = 0) -> list[str]:
    """Mostly short posts with a long tail, like real social-media text."""
    rng = random.Random(seed)
    posts = []
    for _ in range(n):
        n_words = min(int(rng.lognormvariate(3.0, 0.8)) + 3, 250)
        posts.append(" ".join(rng.choice(WORDS) for _ in range(n_words)))
    return posts


def matmul_gflops(device: torch.device, seconds: float = 2.0) -> float:
    """Sustained fp32 GEMM rate at the model's own shapes (tokens x 384 x 1536)."""
    a = torch.randn(4096, 384, device=device)
    b = torch.randn(384, 1536, device=device)
    flops, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        flops += 10 * 2 * a.shape[0] * a.shape[1] * b.shape[1]
    return flops / (time.perf_counter() - t0) / 1e9


def naive(clf: Any, texts: list[str], batch: int, padding) -> None:
    for start in range(0, len(texts), batch):
        enc = clf.tokenizer(texts[start:start + batch], padding=padding, truncation=True,
                            max_length=clf.max_length, return_tensors="pt").to(clf.device)
        with torch.inference_mode():
            clf.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--posts", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--quantize", default=None)
    args = ap.parse_args()
    clf = build_classifier("embedding_prototypes", {
        "labels_file": str(ROOT / "configs" / "labels" / "intergroup.yaml"),
        "device": args.device, "precision": args.precision, "quantize": args.quantize,
        "mini_batch_size": args.batch})
    texts = synthetic_posts(args.posts)
    real_tokens = sum(len(ids) for ids in clf.tokenizer(texts, truncation=True,
                                                        max_length=clf.max_length)["input_ids"])
    clf.classify(texts[:128])  # warm-up
    t_ours = timed(lambda: clf.classify(texts))
    t_naive = timed(lambda: naive(clf, texts, args.batch, True))
    t_maxlen = timed(lambda: naive(clf, texts, args.batch, "max_length"))
    cfg = clf.model.config
    # Dense FLOPs per real token: 4 attention projections + 2 FFN matrices, 2 FLOPs per MAC.
    flops_per_token = cfg.num_hidden_layers * 2 * (4 * cfg.hidden_size ** 2
                                                   + 2 * cfg.hidden_size * cfg.intermediate_size)
    gflops = matmul_gflops(clf.device)
    ours_tok_s = real_tokens / t_ours
    out = {
        "device": str(clf.device), "precision": str(clf.dtype or "fp32"),
        "quantize": args.quantize, "posts": args.posts, "real_tokens": real_tokens,
        "threads": torch.get_num_threads(),
        "posts_per_s": {"ours": round(args.posts / t_ours, 1),
                        "naive_padding_true": round(args.posts / t_naive, 1),
                        "padding_max_length": round(args.posts / t_maxlen, 1)},
        "real_tokens_per_s": {"ours": round(ours_tok_s), "naive_padding_true":
                              round(real_tokens / t_naive),
                              "padding_max_length": round(real_tokens / t_maxlen)},
        "ratio_ours_over_naive": round(t_naive / t_ours, 2),
        "ratio_ours_over_max_length": round(t_maxlen / t_ours, 2),
        "matmul_fp32_gflops": round(gflops, 1),
        "model_gflops_achieved": round(ours_tok_s * flops_per_token / 1e9, 1),
        "roofline_fraction": round(ours_tok_s * flops_per_token / 1e9 / gflops, 2),
        "targets": {"ratio_ours_over_naive": 1.6, "ratio_ours_over_max_length": 4,
                    "roofline_fraction": 0.7},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
