"""A machine too busy for Ray to start: the job's own local Ray is started again (bounded),
what each failed start left is stopped, and the command ends with one line naming the cause.
Ray's start fails here exactly as under load — its GCS answers the raylet's registration
late (Ray's own ``testing_asio_delay_us`` hook), past the 30 s Ray waits for it; those 30 s
run on a clock ten times fast (``tests/fast_ray_clock_proc.py``), 3 s each."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.cli_helpers import write_config, write_posts
from tests.pipeline_helpers import PLUGIN

pytestmark = [pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
# 12 s late: past the 3 s each check of it waits here (see the test), for each start.
LATE_REGISTRATION = "NodeInfoGcsService.grpc_server.RegisterNode=12000000:12000000"


def test_a_local_ray_that_cannot_start_in_time_is_retried_then_named_in_one_line(tmp_path):
    cfg = write_config(tmp_path, {"type": PLUGIN}, posts=write_posts(tmp_path, 50, days=1))
    # Ray's check of the registration waits 3 s (its own setting); its 30 s loop around the
    # checks runs on the fast clock: each start gives up after ~3 s, as Ray's own 30 s would.
    env = dict(os.environ, RAY_testing_asio_delay_us=LATE_REGISTRATION, PYTHONPATH=str(ROOT),
               RAY_raylet_start_wait_time_s="3")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fast_ray_clock_proc", "--config", str(cfg), "-r",
         "posts", "--add-to-queue", "-i", "g", "--run-integrations", "--set",
         "ray.start_attempts=2"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    gcs_seen: list[int] = []  # each start's GCS, in order
    overlap: list[int] = []   # a GCS of an earlier start still running when a new one began

    def watch() -> None:
        me = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                kids = me.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            for kid in kids:
                try:
                    if kid.name() == "gcs_server" and kid.pid not in gcs_seen:
                        overlap.extend(p for p in gcs_seen if psutil.pid_exists(p) and
                                       psutil.Process(p).status() != psutil.STATUS_ZOMBIE)
                        gcs_seen.append(kid.pid)
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    watcher.join(timeout=10)
    lines = [x for x in err.splitlines() if x.strip()  # Ray announces its test hook once:
             and not x.startswith("RAY_testing_asio_delay_us is set")]
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in err and "timed out during startup" not in err, err[-3000:]
    [again] = [x for x in lines if x.startswith("ray: ")]
    assert again.startswith("ray: the local Ray did not come up within Ray's 30 s (load "
                            "average ") and again.endswith("starting it again (2 of 2)"), again
    [error] = [x for x in lines if x.startswith("error: ")]
    assert error.startswith("error: the local Ray did not start: 2 start(s), each given "
                            "Ray's 30 s"), error
    assert f"on {os.cpu_count()} cores" in error and "ray.start_attempts=4" in error
    assert "RAY_raylet_start_wait_time_s=120" in error
    assert "--address" in error and lines == [again, error], lines
    assert len(gcs_seen) == 2 and overlap == [], (gcs_seen, overlap)  # the first was stopped
    assert not (tmp_path / "data" / "queue").exists()  # nothing was queued


def test_a_local_ray_held_up_longer_than_the_lost_limit_is_waited_for(tmp_path):
    """The job's own local Ray, its QueueActor frozen (SIGSTOP, as a loaded machine holds a
    process up) for over twice ``cluster_lost_after_s``: its GCS and raylet are alive, so the
    run is slow, not lost — it waits, goes on when the actor does, and labels each post once."""
    import pyarrow.dataset as pads

    posts = write_posts(tmp_path, 600, days=1)
    cfg = write_config(tmp_path, {"type": PLUGIN, "params": {"delay_s": 0.2}}, posts=posts)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.backfill", "--config", str(cfg), "-r", "posts",
         "--add-to-queue", "-i", "g", "--run-integrations", "--write-cache", "all", "--quiet",
         "--set", "pipeline.cluster_lost_after_s=2"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        deadline, queue_actor = time.monotonic() + 180, None
        while queue_actor is None:  # its QueueActor, once the run has labelled something
            assert time.monotonic() < deadline and proc.poll() is None, "never got going"
            time.sleep(0.2)
            if not list((tmp_path / "data").glob("ml_inference_intergroup/*/*.parquet")) and \
                    not (tmp_path / "data" / "queue").exists():
                continue
            for kid in psutil.Process(proc.pid).children(recursive=True):
                try:
                    if " ".join(kid.cmdline()).startswith("ray::QueueActor"):
                        queue_actor = kid
                except psutil.NoSuchProcess:
                    pass
        time.sleep(2)  # the run is under way
        queue_actor.suspend()
        time.sleep(5)  # two and a half times the lost limit without an answer
        queue_actor.resume()
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert "lost contact" not in err and "Traceback" not in err
    uris = pads.dataset(tmp_path / "data" / "ml_inference_intergroup",
                        partitioning="hive").to_table(columns=["uri"]).column("uri").to_pylist()
    assert len(uris) == len(set(uris)) > 550
