"""`ray job submit` against a real local cluster (`ray start --head`), as on a cluster."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import date
from pathlib import Path

import pyarrow.dataset as pads
import pytest


pytestmark = [pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "ray start exited"
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(url)


def _parquet_uris(data: Path) -> list[str]:
    return pads.dataset(data / "ml_inference_intergroup", partitioning="hive").to_table(
        columns=["uri"]).column("uri").to_pylist()


def test_demo_config_runs_locally_and_as_a_job_on_a_running_head(tmp_path):
    """The shipped demo config, copied with its relative paths into another folder, run
    while a `ray start --head` is up: once as a plain local command (it joins the head, so
    its ray: block is ignored) and once through `ray job submit --working-dir .` (the job
    runs in an uploaded copy of the project). Both write where the config says."""
    from jobs.make_demo_data import write_demo

    project = tmp_path / "study"
    shutil.copytree(ROOT / "configs", project / "configs")
    write_demo(project / "demo_data" / "posts", 300, 2, date(2024, 10, 1))
    config = project / "configs" / "demo.yaml"
    data = project / "data"  # demo.yaml says ../data
    gcs, dash, agent, grpc, client, metrics, rte = _free_ports(7)
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")  # the job's `python`
    env.pop("RAY_ADDRESS", None)
    ray_tmp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # unix socket paths must stay short
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2",
         f"--port={gcs}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent}",
         f"--dashboard-agent-grpc-port={grpc}", f"--ray-client-server-port={client}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rte}",
         "--object-store-memory=200000000", f"--temp-dir={ray_tmp}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        address = f"http://127.0.0.1:{dash}"
        _wait_http(f"{address}/api/version", head)
        from ray._private.services import get_node_ip_address

        local = subprocess.run(
            [sys.executable, "-m", "jobs.backfill", "--config", str(config), "-r", "posts",
             "--add-to-queue", "-i", "g", "--run-integrations", "--write-cache", "all"],
            cwd=tmp_path, capture_output=True, text=True, timeout=400,
            env=dict(env, RAY_ADDRESS=f"{get_node_ip_address()}:{gcs}",
                     PYTHONPATH=str(ROOT)))
        assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
        assert "joining a running Ray cluster" in local.stderr
        assert "num_cpus" in local.stderr and "object_store_memory" in local.stderr
        first = _parquet_uris(data)
        assert len(first) == len(set(first)) > 250
        shutil.rmtree(data)  # the same work again, this time as a submitted job
        runtime_env = ('{"excludes": [".venv", ".git", "data", "demo_data", "*.egg-info"],'
                       ' "env_vars": {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}}')
        job = subprocess.run(
            [str(BIN / "ray"), "job", "submit", f"--address={address}", "--working-dir", ".",
             "--runtime-env-json", runtime_env, "--",
             "python", "-m", "jobs.backfill", "--config", str(config), "-r", "posts",
             "--add-to-queue", "-i", "g", "--run-integrations", "--write-cache", "all",
             "--quiet"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in job.stdout
        uris = _parquet_uris(data)
        assert sorted(uris) == sorted(first)
        assert not (ROOT / "configs" / "data").exists()
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops its cluster on exit
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # anything of this cluster still left
        except ProcessLookupError:
            pass
        shutil.rmtree(ray_tmp, ignore_errors=True)
