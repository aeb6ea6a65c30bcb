"""A kill campaign against the real command line (not CI): N rounds of the one-command form on
one shared data dir, each SIGKILLed at a random moment (enqueue, inference, export, output
compaction), with random clears and relabels between rounds and a new day of posts arriving
before most rounds (a backfill that grows); then one clean rerun of each
version (``--relabel-other-versions``: a round of A skips posts B labelled first, as it should).
After every round it checks that no post is in two places or twice in the parquet
output; after the reruns, that every valid post is labelled exactly once per version and
nothing is pending, leased or dead. Prints a line per round and exits 1 on any loss or
duplicate.

    .venv/bin/python benchmarks/kill_campaign.py --rounds 20

The config is ``configs/valence.yaml`` as shipped (VADER: no model to load), with the data
dir, the posts and a small queue batch set on the command line; version B is the same with
another ``threshold`` (another config_hash), enqueued with ``--relabel-other-versions``.
A kill hits the command's driver alone (its local Ray may outlive it for a moment, as after a
crash) or its whole process group (a machine that went down), picked at random.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow.dataset as pads  # noqa: E402

from queue_store.rows.validation import as_post_table, split_valid  # noqa: E402
from tests.audit import places  # noqa: E402

NAME = "ml_inference_valence"
CONFIG = ROOT / "configs" / "valence.yaml"
VERSIONS = {"A": [], "B": ["--set", f"integrations.{NAME}.classifier.params.threshold=0.3"]}
STAGES = ["-r", "posts", "--add-to-queue", "-i", "v", "--run-integrations", "--write-cache",
          "all"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--posts", type=int, default=1000, help="posts per day")
    ap.add_argument("--days", type=int, default=10, help="days of posts, arriving one a round")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", help="folder to work in (default: a new temporary one)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.work or tempfile.mkdtemp(prefix="kill-campaign-"))
    stock, posts, data = work / "stock", work / "posts", work / "data"
    subprocess.run([sys.executable, "-m", "jobs.tools.demo_data", "--posts",
                    str(args.posts * args.days), "--days", str(args.days), "--out", str(stock)],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    days = sorted(stock.iterdir())
    posts.mkdir(parents=True, exist_ok=True)
    shutil.move(str(days.pop(0)), posts)
    base = ["--config", str(CONFIG), "--data-dir", str(data), "--set",
            f"posts.path={posts}", "--set", "queue.batch_size=100", "--set",
            "pipeline.export_rows=500", "--quiet"]
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               RAY_DATA_DISABLE_PROGRESS_BARS="1", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    print(f"work dir {work}: {args.days} days of {args.posts} posts, one more arriving before "
          f"most rounds; {args.rounds} rounds")
    print("round  version  between         kill                     exit  rows  distinct  "
          "pending  leased  dead  problems")
    leftovers: list[subprocess.Popen] = []
    used = {"A"}
    typical = 20.0  # seconds a whole round takes; measured by the rounds not killed
    failures = 0
    for n in range(1, args.rounds + 1):
        if days and rng.random() < 0.7:
            shutil.move(str(days.pop(0)), posts)
        version = rng.choice("AAB")
        used.add(version)
        between = rng.choice(["-", "-", "clear input", "clear output", "relabel B"])
        if between != "-":
            cmd = {"clear input": ["--clear-input-queues", "--yes"],
                   "clear output": ["--clear-output-queues", "--yes"],
                   "relabel B": ["-r", "posts", "--add-to-queue", "-i", "v",
                                 "--relabel-other-versions", *VERSIONS["B"]]}[between]
            if between == "relabel B":
                used.add("B")
            subprocess.run([sys.executable, "-m", "jobs.backfill", *base, *cmd], cwd=ROOT,
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        extra = (["--relabel-other-versions"] if version == "B" else []) + (
            ["--compact-output", "all"] if rng.random() < 0.3 else [])
        proc = subprocess.Popen([sys.executable, "-m", "jobs.backfill", *base, *STAGES,
                                 *VERSIONS[version], *extra], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        started = time.monotonic()
        kill = rng.choice(["driver", "driver", "group", "none"])
        # When: at a random time, or just after the run holds leases, or after it labelled
        # (and so exports, and may compact, soon).
        moment = rng.choice(["time", "leased", "labelled"])
        at = rng.uniform(0.5, typical)
        if kill == "none":
            proc.wait(timeout=900)
            typical = max(5.0, time.monotonic() - started)
            how = "not killed"
        elif _wait_for(proc, data, moment, at, rng):
            if kill == "driver":
                os.kill(proc.pid, signal.SIGKILL)
            else:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            how = f"{kill} {moment} {time.monotonic() - started:4.1f}s"
        else:
            how = "finished first"
        err = proc.stderr.read().decode(errors="replace").strip().splitlines()
        leftovers.append(proc)
        for old in leftovers[:-1]:  # an earlier round's Ray, if it outlived its driver
            _kill_group(old)
        leftovers = leftovers[-1:]
        found = places(data / "queue" / f"{NAME}.db", NAME, data / NAME)
        problems = found.problems()
        failures += bool(problems)
        print(f"{n:5d}  {version:7s}  {between:14s}  {how:23s}  {proc.returncode:4d}  "
              f"{sum(found.parquet.values()):5d}  {len(found.parquet):8d}  "
              f"{sum(found.pending.values()):7d}  {sum(found.leased.values()):6d}  "
              f"{sum(found.dead.values()):4d}  {len(problems)}", flush=True)
        for line in problems[:5]:
            print(f"       {line}")
        if proc.returncode not in (0, -9, 130) and err:
            print(f"       stderr: {err[-1][:300]}")
    for old in leftovers:
        _kill_group(old)
    print("clean reruns:", ", ".join(sorted(used)))
    for version in sorted(used):
        # With --relabel-other-versions: a post first labelled under the other version is
        # one this version skipped on purpose; the reruns label every post under each.
        rerun = subprocess.run([sys.executable, "-m", "jobs.backfill", *base, *STAGES,
                                *VERSIONS[version], "--relabel-other-versions"],
                               cwd=ROOT, env=env, capture_output=True, text=True)
        print(f"  rerun {version}: exit {rerun.returncode}"
              + (f" ({rerun.stderr.strip().splitlines()[-1][:200]})"
                 if rerun.returncode and rerun.stderr.strip() else ""))
        failures += rerun.returncode != 0
    found = places(data / "queue" / f"{NAME}.db", NAME, data / NAME)
    valid = _valid_uris(posts)
    print(f"posts: {len(list(posts.iterdir()))} days, {len(valid)} valid")
    failures += _final_check(found, valid, used)
    print("RESULT:", "nothing lost or duplicated" if not failures else f"{failures} failure(s)")
    return 1 if failures else 0


def _final_check(found, valid: set[str], used: set[str]) -> int:
    bad = len(found.problems())
    hashes = sorted({h for _, h in found.parquet})
    per_hash = {h: {u for u, hh in found.parquet if hh == h} for h in hashes}
    print(f"after the reruns: {len(hashes)} config_hash(es) in the output; rows "
          f"{sum(found.parquet.values())}, distinct (uri, config_hash) {len(found.parquet)}; "
          f"pending {sum(found.pending.values())}, leased {sum(found.leased.values())}, "
          f"dead {sum(found.dead.values())}, unexported {sum(found.unexported.values())}")
    for h, uris in per_hash.items():
        lost, extra = len(valid - uris), len(uris - valid)
        print(f"  {h}: {len(uris)} posts labelled, {lost} valid posts missing, {extra} "
              "unexpected")
        bad += lost + extra
    bad += len(hashes) != len(used)
    bad += sum(found.pending.values()) + sum(found.leased.values()) + sum(
        found.unexported.values())
    bad += sum(n - 1 for n in found.parquet.values() if n > 1)
    return bad


def _wait_for(proc: subprocess.Popen, data: Path, moment: str, at: float,
              rng: random.Random) -> bool:
    """Until the moment to kill ``proc`` (False: it ended first)."""
    from queue_store import NoQueueError, QueueStore

    deadline = time.monotonic() + (at if moment == "time" else 600)
    labelled0 = None
    while proc.poll() is None:
        if time.monotonic() >= deadline:
            return True
        if moment != "time":
            try:
                store = QueueStore(data, NAME, readonly=True)
                try:
                    st = store.status()
                finally:
                    store.close()
            except (NoQueueError, sqlite3.Error):
                st = None
            if st is not None:
                labelled = st.output_rows_exported + st.output_rows_unexported
                labelled0 = labelled if labelled0 is None else labelled0
                if (moment == "leased" and st.processing_posts) or (
                        moment == "labelled" and labelled > labelled0):
                    deadline = min(deadline, time.monotonic() + rng.uniform(0, 2))
                    moment = "time"
        time.sleep(0.05)
    return False


def _valid_uris(posts: Path) -> set[str]:
    table = pads.dataset(posts, partitioning="hive").to_table(
        columns=["uri", "text", "preprocessing_timestamp"])
    return set(split_valid(as_post_table(table)).valid.column("uri").to_pylist())


def _kill_group(proc: subprocess.Popen) -> None:
    """End what is left of a round's process group (started by this script, by its id)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    sys.exit(main())
