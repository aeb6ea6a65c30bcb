"""End-to-end pipeline figures, every comparison measured in the same run (prints JSON + table).

    python benchmarks/pipeline_bench.py                        # every part (~10 min)
    python benchmarks/pipeline_bench.py --parts model emulated

enqueue:  the CLI's enqueue stage alone on 1M posts (no Ray): posts/s and seconds per step
          (parquet read, validation with fingerprints, ledger, payload encoding, SQLite insert,
          commit), against the original tool's queue insert on the same posts.
scale:    N posts through one command (enqueue streaming into inference → parquet) with the
          no-op ``constant`` classifier: posts/s, CPU per post of each one-of-a-kind role
          (driver, QueueActor, WriterActor, StageReports thread) and of the read tasks summed,
          peak private memory per process role; against the old tool's whole flow on the same
          posts, and — at ``--plain`` posts — a plain Ray Data job (read_parquet →
          map_batches(the same classifier, same actor pool and batch size) → write_parquet)
          and the same job with Ray Data's ``CheckpointConfig(id_column="uri")``, run
          alternately with ours.
emulated: classifier actors that only wait (``benchmarks/emulated.py``: each labels at most R
          posts/s, no CPU), so the pipeline's own cost shows as lost throughput; split, by
          the labels' timestamps, into the time to the first label (fixed cost) and the rate
          from the first label to the last (steady state).
model:    the packaged MiniLM, 3,000 posts, one command, against the same classifier in a
          plain loop (model load included in both; ``ray.init`` excluded: it runs first).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
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

from old_tool_baseline import old_tool_backfill, old_tool_insert  # noqa: E402
from rss_sampler import RssSampler, Sampler  # noqa: E402

from jobs.config import parse_config  # noqa: E402
from jobs.posts.source import find_post_files  # noqa: E402
from jobs.stages.enqueue import enqueue_posts  # noqa: E402
from jobs.stages.inference import run_integrations  # noqa: E402

NAME = "ml_inference_intergroup"
MODEL_PARAMS = {"labels_file": str(ROOT / "configs" / "labels" / "intergroup.yaml"),
                "torch_threads": 2, "mini_batch_size": 64}
BATCH = 1000
ACTORS = {"min": 1, "max": 1}


def _config(data_dir: Path, posts: Path, classifier: dict, batch_size: int,
            actors: dict | None = None, num_cpus: float = 1) -> object:
    return parse_config({
        "data_dir": str(data_dir), "posts": {"path": str(posts)},
        "integrations": {NAME: {"code": "g", "classifier": classifier, "batch_size": batch_size,
                                "num_cpus": num_cpus, "actors": actors or ACTORS}}})


def _make_posts(root: Path, n: int) -> Path:
    """In a child process, so generating 1M posts does not count in the driver's memory."""
    posts = root / f"posts_{n}"
    if not posts.exists():
        subprocess.run([sys.executable, "-m", "jobs.tools.demo_data", "--posts", str(n),
                        "--days", "7", "--out", str(posts)], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
    return posts


def _pipeline(root: Path, posts: Path, classifier: dict, batch_size: int,
              actors: dict | None = None, data: Path | None = None,
              num_cpus: float = 1) -> dict:
    """Enqueue + inference in one command, as ``backfill --add-to-queue --run-integrations``
    runs them: read tasks claim each enqueue chunk as soon as it is committed."""
    data = data or Path(tempfile.mkdtemp(dir=root))
    cfg = _config(data, posts, classifier, batch_size, actors, num_cpus)
    enq: dict = {}
    files = find_post_files(str(posts), None, None)

    def feed() -> None:
        t, cpu = time.perf_counter(), time.thread_time()
        [enq["summary"]] = enqueue_posts(cfg, [NAME], files, quiet=True)
        enq["s"], enq["cpu_s"] = time.perf_counter() - t, time.thread_time() - cpu

    cpu0, t0, started = time.process_time(), time.perf_counter(), time.time()
    sampling0 = Sampler.cpu_of_all()
    [run] = run_integrations(cfg, [NAME], quiet=True, feed=feed, feed_posts=files.good_rows)
    if isinstance(run, BaseException):
        raise run
    total, driver_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    sampling = Sampler.cpu_of_all() - sampling0
    n = max(run.labelled, 1)
    # The driver's own (Ray Data's executor, the run's threads) apart from the enqueue beside
    # it (its thread's CPU: reading posts, the ledger, SQLite inserts) and from this
    # benchmark's samplers, threads of the same process (psutil over every process).
    roles = {"driver": driver_cpu - enq["cpu_s"] - sampling, "enqueue_in_driver": enq["cpu_s"],
             "samplers_in_driver": sampling, **run.role_cpu_s}
    return {"posts": run.labelled, "data_dir": str(data), "enqueue_s": round(enq["s"], 2),
            "enqueue_posts_per_s": round(enq["summary"].enqueued / enq["s"]),
            "total_s": round(total, 2), "posts_per_s": round(run.labelled / total),
            **_label_times(data, started, started + total, run.labelled),
            "cpu_us_per_post": {k: round(v / n * 1e6, 2) for k, v in roles.items()},
            "classifier_actor_us_per_post_outside_classify": run.stage_us_per_post}


def _label_times(data: Path, started: float, ended: float, posts: int) -> dict:
    """Where a run's time went, from its labels' own timestamps: seconds from the command's
    start to the first label (the fixed cost: actors, model, first claim), the rate between
    the first label and the last (the steady state), and from the last label to the end."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    stamps = pads.dataset(data / NAME, partitioning="hive").to_table(
        columns=["label_timestamp"]).column("label_timestamp")
    first, last = (t.as_py().timestamp() for t in pc.min_max(stamps).values())
    return {"first_label_s": round(first - started, 2),
            "steady_posts_per_s": round(posts / max(last - first, 1e-6)),
            "last_label_to_end_s": round(ended - last, 2)}


class PlainStage:
    """What a Ray user would write instead: the classifier on each batch, labels appended."""

    def __init__(self, classifier: dict) -> None:
        from classifiers.registry import build_classifier

        self.clf = build_classifier(classifier["type"], classifier.get("params"))

    def __call__(self, batch):  # noqa: ANN001 - a pyarrow table
        import pyarrow as pa

        labels = self.clf.classify(batch.column("text").to_pylist())
        for name in labels[0] if labels else ():
            batch = batch.append_column(name, pa.array([row[name] for row in labels]))
        return batch


def _plain_ray_data(root: Path, posts: Path, classifier: dict, batch_size: int,
                    checkpointed: bool = False) -> dict:
    """``checkpointed``: with Ray Data's own resumable mode (``CheckpointConfig`` on the
    ``uri`` column, checkpoints in a local folder), what a Ray user would reach for first."""
    import ray.data
    from ray.data import ActorPoolStrategy, DataContext
    from ray.data.checkpoint import CheckpointConfig

    out = Path(tempfile.mkdtemp(dir=root))
    ctx = DataContext.get_current()
    before = ctx.checkpoint_config
    if checkpointed:
        ctx.checkpoint_config = CheckpointConfig(
            id_column="uri", checkpoint_path=tempfile.mkdtemp(dir=root))
    t0 = time.perf_counter()
    try:
        ds = ray.data.read_parquet(str(posts),
                                   columns=["uri", "text", "preprocessing_timestamp"])
        ds = ds.map_batches(PlainStage, fn_constructor_kwargs={"classifier": classifier},
                            compute=ActorPoolStrategy(min_size=ACTORS["min"],
                                                      max_size=ACTORS["max"]),
                            batch_size=batch_size, batch_format="pyarrow", num_cpus=1)
        ds.write_parquet(str(out))
    finally:
        ctx.checkpoint_config = before
    total = time.perf_counter() - t0
    n = ray.data.read_parquet(str(out)).count()
    return {"posts": n, "total_s": round(total, 2), "posts_per_s": round(n / total)}


def part_enqueue(root: Path, n: int) -> dict:
    posts = _make_posts(root, n)
    cfg = _config(Path(tempfile.mkdtemp(dir=root)), posts, {"type": "constant"}, BATCH)
    t0 = time.perf_counter()
    [s] = enqueue_posts(cfg, [NAME], find_post_files(str(posts), None, None), quiet=True)
    took = time.perf_counter() - t0
    old = old_tool_insert(posts, Path(tempfile.mkdtemp(dir=root)))
    return {"posts": n, "enqueued": s.enqueued, "total_s": round(took, 2),
            "posts_per_s": round(n / took),
            "us_per_post_by_step": {k: round(v / n * 1e6, 2) for k, v in s.step_s.items()},
            "old_tool_insert_posts_per_s": old["posts_per_s"],
            "ratio_to_old_insert": round(n / took / old["posts_per_s"], 2),
            "target_posts_per_s": 300_000}


def part_scale(root: Path, sizes: list[int], plain_at: int, rounds: int) -> dict:
    out: dict = {}
    for n in sizes:
        posts = _make_posts(root, n)
        with RssSampler() as rss:
            res = _pipeline(root, posts, {"type": "constant"}, BATCH)
        res["us_per_post"] = round(res["total_s"] / max(res["posts"], 1) * 1e6, 1)
        res["peak_private_rss_mb"] = rss.peaks_mb()
        old = old_tool_backfill(posts, Path(tempfile.mkdtemp(dir=root)))
        res["old_tool_posts_per_s"] = old["posts_per_s"]
        res["ratio_to_old_tool"] = round(res["posts_per_s"] / old["posts_per_s"], 2)
        if n == plain_at:  # ours, the plain Ray Data job and its checkpointed twin, in turn
            ours, plain, checkpointed = [res["posts_per_s"]], [], []
            for i in range(rounds):
                plain.append(_plain_ray_data(root, posts, {"type": "constant"},
                                             BATCH)["posts_per_s"])
                checkpointed.append(_plain_ray_data(root, posts, {"type": "constant"}, BATCH,
                                                    checkpointed=True)["posts_per_s"])
                if i < rounds - 1:
                    ours.append(_pipeline(root, posts, {"type": "constant"}, BATCH)
                                ["posts_per_s"])
            res["ours_posts_per_s_runs"], res["plain_ray_data_posts_per_s_runs"] = ours, plain
            res["checkpointed_ray_data_posts_per_s_runs"] = checkpointed
            res["ratio_to_plain_ray_data"] = round(statistics.median(ours)
                                                   / statistics.median(plain), 2)
            res["ratio_to_checkpointed_ray_data"] = round(statistics.median(ours)
                                                          / statistics.median(checkpointed), 2)
        out[str(n)] = res
        print(f"scale {n}: {res['total_s']}s, {res['posts_per_s']} posts/s", file=sys.stderr)
    small, large = str(min(sizes)), str(max(sizes))
    key = "peak_private_rss_mb"
    growth = {role: round(mb / out[small][key][role], 2)
              for role, mb in out[large][key].items() if role in out[small][key]}
    return {"runs": out, "peak_private_rss_large_over_small": growth,
            "targets": {"ratio_to_plain_ray_data": 1.0, "ratio_to_checkpointed_ray_data": 1.0,
                        "ratio_to_old_tool_at_1M": 0.5, "cpu_us_per_post_each_role": 5,
                        "peak_ratio": 1.3}}


def part_emulated(root: Path, n: int, actors: int, rate: float) -> dict:
    posts = _make_posts(root, n)
    classifier = {"type": "benchmarks.emulated:EmulatedAccelerator", "params": {"posts_per_s": rate}}
    # An accelerator's actor needs little host CPU; two at 1 CPU each would leave none for
    # the read tasks on this 2-CPU Ray (the pool would wait for ever): together they get 1.5.
    res = _pipeline(root, posts, classifier, BATCH, {"min": actors, "max": actors},
                    num_cpus=min(0.5, 1.5 / actors))
    ceiling = actors * rate
    return {"actors": actors, "posts_per_s_each": rate, "ceiling_posts_per_s": ceiling,
            **res, "efficiency": round(res["posts_per_s"] / ceiling, 2),
            "steady_efficiency": round(res["steady_posts_per_s"] / ceiling, 2), "target": 0.8}


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


def main() -> None:
    ap = argparse.ArgumentParser()
    # scale before model: its driver memory must not include the model loaded in-process
    ap.add_argument("--parts", nargs="+",
                    default=["enqueue", "scale", "emulated", "model"])
    ap.add_argument("--enqueue-posts", type=int, default=1_000_000)
    ap.add_argument("--scale", type=int, nargs="+", default=[10_000, 200_000, 1_000_000])
    ap.add_argument("--plain", type=int, default=200_000, help="size run against plain Ray Data")
    ap.add_argument("--rounds", type=int, default=2, help="alternate runs of ours and plain")
    ap.add_argument("--emulated-posts", type=int, default=200_000)
    ap.add_argument("--emulated-rate", type=float, default=10_000)
    ap.add_argument("--emulated-actors", type=int, default=2)
    ap.add_argument("--model-posts", type=int, default=3000)
    args = ap.parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if "enqueue" in args.parts:  # no Ray running: the stage alone
            results["enqueue"] = part_enqueue(root, args.enqueue_posts)
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=500_000_000,
                 log_to_driver=False)
        results["ray_init_s"] = round(time.perf_counter() - t0, 2)
        parts = {"scale": lambda: part_scale(root, args.scale, args.plain, args.rounds),
                 "emulated": lambda: part_emulated(root, args.emulated_posts,
                                                   args.emulated_actors, args.emulated_rate),
                 "model": lambda: part_model(root, args.model_posts)}
        for part in args.parts:
            if part in parts:
                results[part] = parts[part]()
                print(f"{part}: {json.dumps(results[part], default=str)}", file=sys.stderr,
                      flush=True)  # each part as it ends, should a later one fail
        ray.shutdown()
    print(json.dumps(results, indent=2, default=str))
    _table(results)


def _table(results: dict) -> None:
    if "enqueue" in results:
        r = results["enqueue"]
        print(f"enqueue   {r['posts_per_s']:>8} posts/s (target >= {r['target_posts_per_s']}) | "
              f"{r['ratio_to_old_insert']}x the old tool's insert | µs/post by step "
              f"{r['us_per_post_by_step']}")
    if "scale" in results:
        for n, r in results["scale"]["runs"].items():
            plain = (f" | {r['ratio_to_plain_ray_data']}x plain Ray Data, "
                     f"{r['ratio_to_checkpointed_ray_data']}x checkpointed Ray Data "
                     "(target >= 1.0)" if "ratio_to_plain_ray_data" in r else "")
            print(f"scale {n:>8}: {r['total_s']:>7}s {r['posts_per_s']:>7} posts/s | "
                  f"{r['ratio_to_old_tool']}x old tool{plain} | enqueue "
                  f"{r['enqueue_posts_per_s']} posts/s | CPU µs/post {r['cpu_us_per_post']} | "
                  f"peak private MB {r['peak_private_rss_mb']}")
        print("peak growth, largest over smallest:",
              results["scale"]["peak_private_rss_large_over_small"], "(target <= 1.3)")
    if "emulated" in results:
        r = results["emulated"]
        print(f"emulated  {r['actors']} actors x {r['posts_per_s_each']:g} posts/s: "
              f"{r['posts_per_s']} posts/s, efficiency {r['efficiency']} (target >= 0.8) | "
              f"first label at {r['first_label_s']}s, then {r['steady_posts_per_s']} posts/s "
              f"({r['steady_efficiency']} of the ceiling), last label to end "
              f"{r['last_label_to_end_s']}s | CPU µs/post {r['cpu_us_per_post']}")
    if "model" in results:
        r = results["model"]
        print(f"model     ours {r['ours']['posts_per_s']:>8} posts/s | plain_loop "
              f"{r['plain_loop']['posts_per_s']:>8} posts/s | ratio {r['ratio']} "
              f"(target >= {r['target']})")


if __name__ == "__main__":
    main()
