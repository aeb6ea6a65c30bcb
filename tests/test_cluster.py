"""The cluster path against real `ray start` heads on this host (as another user's Ray would
run beside ours): a plain run never joins a head it was not told about, `ray job submit`
and `RAY_ADDRESS` join it, the shipped LLM config runs end to end on a head with a GPU slot
and the model in the Hugging Face cache under its real hub id, and a run whose cluster goes
away stops within a minute with one line and its summary. Every process started here is
stopped by its own PID."""
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
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pyarrow as pa
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


@dataclass
class Head:
    proc: subprocess.Popen
    gcs: str          # host:port, what RAY_ADDRESS takes
    dashboard: str    # http://..., what `ray job submit` and the state API take
    env: dict         # the host's environment: a plain ray.init() here would find this head
    tmp: str


def _start_head(dashboard: bool = True, gpus: int = 0) -> Head:
    tmp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # unix socket paths must stay short
    gcs, dash, agent, grpc, client, metrics, rte = _free_ports(7)
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               RAY_TMPDIR=tmp, PYTHONPATH=str(ROOT),
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")  # the job's `python`
    env.pop("RAY_ADDRESS", None)
    args = [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2",
            f"--num-gpus={gpus}", f"--port={gcs}", f"--ray-client-server-port={client}",
            f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rte}",
            f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={grpc}",
            "--object-store-memory=200000000"]
    args += (["--include-dashboard=true", "--dashboard-host=127.0.0.1",
              f"--dashboard-port={dash}"] if dashboard else ["--include-dashboard=false"])
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    from ray._private.services import get_node_ip_address

    head = Head(proc, f"{get_node_ip_address()}:{gcs}", f"http://127.0.0.1:{dash}", env, tmp)
    _wait_ready(head, dashboard)
    return head


def _wait_ready(head: Head, dashboard: bool, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert head.proc.poll() is None, "ray start exited"
        try:
            if dashboard:
                urllib.request.urlopen(f"{head.dashboard}/api/version", timeout=2)
                return
            if (Path(head.tmp) / "ray" / "ray_current_cluster").exists():
                time.sleep(2)  # the address is written as the head comes up
                return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError("ray start")


def _stop_head(head: Head) -> None:
    """Every process of this head (its own session: `ray start` and all it started)."""
    try:
        os.killpg(head.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    head.proc.wait(timeout=60)
    shutil.rmtree(head.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def head():
    """Someone else's Ray on this host, with a GPU slot (torch finds no CUDA and runs on the
    CPU) and the dashboard `ray job submit` needs."""
    started = _start_head(dashboard=True, gpus=1)
    yield started
    _stop_head(started)


def _cli(env: dict, *args: str, cwd: Path = ROOT, timeout: float = 400
         ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.backfill", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _uris(root: Path) -> list[str]:
    return pads.dataset(root, partitioning="hive").to_table(columns=["uri"]).column(
        "uri").to_pylist()


def _study(tmp_path: Path, posts: int = 80) -> Path:
    """The shipped configs copied, with their relative paths, into a study folder."""
    from jobs.tools.demo_data import write_demo

    project = tmp_path / "study"
    shutil.copytree(ROOT / "configs", project / "configs")
    write_demo(project / "demo_data" / "posts", posts, 2, date(2024, 10, 1))
    return project


def _head_actor_names(head: Head) -> list[str]:
    """Every actor the head has seen (dead ones too), through its dashboard's state API."""
    from ray.util.state import list_actors

    return [a.name or "" for a in list_actors(address=head.dashboard, limit=1000,
                                              raise_on_missing_output=False)]


def test_a_plain_run_starts_its_own_ray_beside_a_foreign_head_and_ray_job_submit_joins_it(
        head, tmp_path):
    """The shipped demo config, run twice on one study folder: a plain command beside the
    head starts a Ray of its own (never joining the head it was not told about), then
    ``ray job submit`` runs it on the head (joined through the ``RAY_ADDRESS`` the job is
    given) and labels the same posts."""
    project = _study(tmp_path)
    config = project / "configs" / "demo.yaml"
    data = project / "data"  # demo.yaml says ../data
    argv = ["--config", str(config), "-r", "posts", "--add-to-queue", "-i", "g",
            "--run-integrations", "--write-cache", "all"]
    local = _cli(head.env, *argv, cwd=tmp_path)  # RAY_TMPDIR points at the head: not joined
    assert local.returncode == 0, local.stderr[-3000:]
    assert "ray: started a local Ray for this run" in local.stderr, local.stderr
    assert "joined" not in local.stderr and "joining" not in local.stderr
    assert not [n for n in _head_actor_names(head) if n.startswith("backfill-")]
    first = _uris(data / "ml_inference_intergroup")
    assert len(first) == len(set(first)) > 70
    shutil.rmtree(data)
    runtime_env = ('{"excludes": [".venv", ".git", "data", "demo_data", "*.egg-info"],'
                   ' "env_vars": {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}}')
    job = subprocess.run(
        [str(BIN / "ray"), "job", "submit", f"--address={head.dashboard}", "--working-dir",
         ".", "--runtime-env-json", runtime_env, "--", "python", "-m", "jobs.backfill", *argv],
        cwd=ROOT, env=head.env, capture_output=True, text=True, timeout=400)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "succeeded" in job.stdout, job.stdout[-3000:]
    assert f"ray: joined the Ray cluster at {head.gcs}" in job.stdout, job.stdout[-3000:]
    assert "num_cpus" in job.stdout and "object_store_memory" in job.stdout  # ignored
    assert [n for n in _head_actor_names(head) if n.startswith("backfill-queue-")]
    assert sorted(_uris(data / "ml_inference_intergroup")) == sorted(first)
    assert not (ROOT / "configs" / "data").exists()  # nothing inside the uploaded copy


def test_shipped_llm_config_runs_with_the_model_cached_under_its_real_hub_id(
        head, qwen_in_cache, tmp_path):
    """configs/intergroup_llm.yaml as shipped — Qwen/Qwen2.5-1.5B-Instruct by hub id, one GPU
    per actor, bf16 — with only the data locations swapped: the model comes from the HF cache,
    offline, under its real id (a tiny random model stands in for its weights)."""
    from jobs.tools.demo_data import write_demo

    write_demo(tmp_path / "posts", 120, 2, date(2024, 10, 1))
    run = _cli(dict(head.env, RAY_ADDRESS=head.gcs), "--config",
               str(ROOT / "configs" / "intergroup_llm.yaml"), "--data-dir",
               str(tmp_path / "data"), "--set", f"posts.path={tmp_path / 'posts'}",
               "--set", f"output_dir={tmp_path / 'labels'}", "-r", "posts", "--add-to-queue",
               "-i", "g", "--run-integrations", "--write-cache", "all")
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"ray: joined the Ray cluster at {head.gcs}" in run.stderr, run.stderr[-3000:]
    table = pads.dataset(tmp_path / "labels" / "ml_inference_intergroup_llm",
                         partitioning="hive").to_table()
    assert table.num_rows > 100 and len(set(table.column("uri").to_pylist())) == table.num_rows
    assert table.schema.field("label").type == pa.int64()
    assert set(table.column("label").to_pylist()) <= {0, 1}
    assert {"prob_0", "prob_1"} <= set(table.column_names)
    [model] = set(table.column("model").to_pylist())
    assert model.startswith("Qwen/Qwen2.5-1.5B-Instruct")
    print("\n" + run.stdout[-1500:])


def test_a_run_whose_cluster_goes_away_stops_with_one_line_and_its_summary(tmp_path):
    from tests.cli_helpers import write_config, write_posts

    write_posts(tmp_path, 2000, days=1)
    cfg = write_config(tmp_path, {"type": "tests.plugins:KeywordClassifier",
                                  "params": {"delay_s": 0.5}})
    gone = _start_head(dashboard=False)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobs.backfill", "--config", str(cfg), "-r", "posts",
             "--add-to-queue", "-i", "g", "--run-integrations", "--set",
             "pipeline.cluster_lost_after_s=10"], cwd=ROOT, text=True,
            env=dict(gone.env, RAY_ADDRESS=gone.gcs), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        from tests.queue_helpers import Store

        deadline = time.monotonic() + 120
        while True:  # some posts labelled, others in flight
            queue = tmp_path / "data" / "queue" / "ml_inference_intergroup.db"
            if queue.exists():
                st = Store(tmp_path / "data", "ml_inference_intergroup").status()
                if st.output_rows_unexported + st.output_rows_exported and st.processing_posts:
                    break
            assert time.monotonic() < deadline and proc.poll() is None, "never got going"
            time.sleep(0.2)
        os.killpg(gone.proc.pid, signal.SIGKILL)  # the whole cluster, at once
        t0 = time.monotonic()
        out, err = proc.communicate(timeout=120)
        took = time.monotonic() - t0
    finally:
        _stop_head(gone)
    errors = [x for x in err.splitlines() if x.startswith("error:")]
    assert proc.returncode == 1 and took < 60, (proc.returncode, took, err[-2000:])
    assert len(errors) == 1 and "lost contact with the Ray cluster" in errors[0], err[-2000:]
    assert "Traceback" not in err and "\ninference: ml_inference_intergroup" in out, out
