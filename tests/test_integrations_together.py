"""Every integration of a config in one command (no -i): one read of the posts feeds every
queue (each post read and validated once), the runs go side by side with their own actors,
and one that fails stops only itself."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow.dataset as pads
import pytest
import yaml

import jobs.stages.enqueue as enqueue_stage
from jobs.backfill import main
from queue_store import NoQueueError
from tests.queue_helpers import Store
from tests.cli_helpers import ctrl_c_as_in_a_terminal, write_config, write_posts
from tests.fake_hosted import KEY, FakeHosted

pytestmark = [pytest.mark.slow]
KEYWORDS = "ml_inference_intergroup"
VALENCE = "ml_inference_valence"
ROOT = Path(__file__).resolve().parents[1]
PROMPT = str(ROOT / "configs" / "prompts" / "intergroup.yaml")


def _two_integrations(tmp_path: Path, posts: Path, second: str, classifier: dict,
                      **keyword_params: object) -> Path:
    cfg = write_config(tmp_path, {"type": "tests.plugins:KeywordClassifier",
                                  "params": keyword_params}, posts=posts)
    raw = yaml.safe_load(cfg.read_text())
    raw["integrations"][second] = {"code": "v", "classifier": classifier, "batch_size": 100,
                                   "num_cpus": 0.5}
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


def _valid_unique_uris(posts_dir: Path) -> set[str]:
    table = pads.dataset(posts_dir, partitioning="hive").to_table()
    return {r["uri"] for r in table.to_pylist()
            if r["text"] and len(r["text"].strip()) >= 5
            and r["text"].strip().lower() not in ("null", "none", "nan")
            and r["preprocessing_timestamp"]}


def _output_uris(tmp_path: Path, name: str) -> list[str]:
    return pads.dataset(tmp_path / "data" / name, partitioning="hive").to_table(
        columns=["uri"]).column("uri").to_pylist()


def _inference_runs(tmp_path: Path) -> dict[str, dict]:
    runs = [json.loads(p.read_text()) for p in (tmp_path / "data" / "runs").glob("*.json")]
    return {r["integration"]: r for r in runs if r["stage"] == "inference"}


def _status(data: Path, name: str):
    try:  # the run may be creating the file right now
        store = Store(data, name, readonly=True)
    except NoQueueError:
        return None
    try:
        return store.status()
    finally:
        store.close()


def _count_reads(monkeypatch) -> dict[str, list]:
    """Wrap the enqueue's posts reader and its validation: what each was given."""
    seen: dict[str, list] = {"read_calls": [], "rows_read": [], "rows_validated": []}
    read, validate = enqueue_stage.iter_posts, enqueue_stage.split_valid

    def counting_read(files, *args):
        seen["read_calls"].append(sorted(files.good))
        for batch in read(files, *args):
            seen["rows_read"].append(batch.num_rows)
            yield batch

    def counting_validate(table):
        seen["rows_validated"].append(table.num_rows)
        return validate(table)

    monkeypatch.setattr(enqueue_stage, "iter_posts", counting_read)
    monkeypatch.setattr(enqueue_stage, "split_valid", counting_validate)
    return seen


def test_two_integrations_in_one_command_each_output_complete_and_once(
        inprocess, tmp_path, capsys, monkeypatch):
    posts = write_posts(tmp_path, 400, days=2)
    files = sorted(str(p) for p in posts.rglob("*.parquet"))
    # The keyword run takes at least 4 x 1 s; the valence run a fraction of that.
    cfg = _two_integrations(tmp_path, posts, VALENCE, {"type": "vader"}, delay_s=1.0)
    seen = _count_reads(monkeypatch)
    code = main(["--config", str(cfg), "-r", "posts", "--add-to-queue", "--run-integrations",
                 "--write-cache", "all", "--clear-queue"])
    out, err = capsys.readouterr()
    assert code == 0, err
    # One read of every posts file, each post read and validated once, for both queues.
    assert seen["read_calls"] == [files]
    assert sum(seen["rows_read"]) == sum(seen["rows_validated"]) == 400
    expected = _valid_unique_uris(posts)
    for name in (KEYWORDS, VALENCE):
        uris = _output_uris(tmp_path, name)
        assert len(uris) == len(set(uris)) and set(uris) == expected, name
        st = Store(tmp_path / "data", name).status()
        assert st.pending_posts == st.processing_posts == st.dead_posts == 0
    # Side by side: the valence run, second in the config, started with the slow keyword run
    # (one after another, it would have started when that one ended, seconds later).
    runs = _inference_runs(tmp_path)
    started = {n: datetime.fromisoformat(runs[n]["started_at"]) for n in (KEYWORDS, VALENCE)}
    assert runs[KEYWORDS]["duration_s"] >= 4
    assert abs(started[VALENCE] - started[KEYWORDS]) <= timedelta(seconds=1)
    assert runs[VALENCE]["labelled"] == runs[KEYWORDS]["labelled"] == len(expected)
    # A summary per stage and integration, then one table of both.
    assert out.count("\nenqueue: ") == 2 and out.count("\ninference: ") == 2
    table = out.split("all integrations")[1]
    for name in (KEYWORDS, VALENCE):
        row = next(line for line in table.splitlines() if line.startswith(name))
        assert row.split()[1] == row.split()[2] == str(len(expected)) and row.endswith("ok")


def test_a_rejected_key_stops_only_its_own_integration(inprocess, tmp_path, capsys,
                                                       monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", KEY)
    posts = write_posts(tmp_path, 300, days=1)
    with FakeHosted(unauthorized=True) as server:
        hosted = {"type": "openai_chat", "params": {
            "base_url": server.base_url, "model": "tiny", "api_key_env": "TEST_LLM_KEY",
            "prompt_file": PROMPT, "json_mode": True, "timeout_s": 1.0, "max_retries": 2}}
        cfg = _two_integrations(tmp_path, posts, "ml_inference_intergroup_llm", hosted)
        code = main(["--config", str(cfg), "-r", "posts", "--add-to-queue",
                     "--run-integrations", "--write-cache", "all", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 2, err
    expected = _valid_unique_uris(posts)
    uris = _output_uris(tmp_path, KEYWORDS)
    assert len(uris) == len(set(uris)) and set(uris) == expected  # the other one finished
    st = Store(tmp_path / "data", "ml_inference_intergroup_llm").status()
    assert st.pending_posts == len(expected) and st.processing_posts == st.dead_posts == 0
    [line] = [e for e in err.splitlines() if e.startswith("error:")]
    assert line.startswith("error: ml_inference_intergroup_llm: ") and "401" in line
    table = out.split("all integrations")[1]
    assert any(r.startswith(KEYWORDS) and r.endswith("ok") for r in table.splitlines())
    assert any(r.startswith("ml_inference_intergroup_llm") and r.endswith("(exit 2)")
               for r in table.splitlines())


def test_ctrl_c_stops_every_integration_cleanly(ray_session, tmp_path):
    """SIGINT while two runs label side by side: exit 130, one ``interrupted:`` line per
    integration, every claim handed back, everything labelled exported exactly once."""
    posts = write_posts(tmp_path, 4000, days=2)
    go_on = tmp_path / "go-on"  # each classifier actor labels 2 calls, then waits for it
    hold = {"hold_after_calls": 2, "hold_until_file": str(go_on)}
    cfg = _two_integrations(tmp_path, posts, "ml_inference_slow", {
        "type": "tests.plugins:KeywordClassifier", "params": hold}, **hold)
    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address,
               PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "jobs.backfill", "--config", str(cfg), "-r",
                             "posts", "--add-to-queue", "--run-integrations"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ctrl_c_as_in_a_terminal)
    names = (KEYWORDS, "ml_inference_slow")
    deadline = time.monotonic() + 120
    while True:  # both runs have labelled something and hold claims
        statuses = [_status(tmp_path / "data", n) for n in names]
        if all(st is not None and st.output_rows_unexported + st.output_rows_exported >= 100
               and st.processing_posts for st in statuses):
            break
        assert time.monotonic() < deadline and proc.poll() is None, "the runs never got going"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    time.sleep(1)  # the signal is handled (claiming stops) before the held calls go on
    go_on.touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    stops = [line for line in err.splitlines() if line.startswith("interrupted:")]
    assert sorted(stops) == sorted(f"interrupted: {n}: this run's claims were handed back and "
                                   "what it labelled was exported; rerun the same command to "
                                   "finish" for n in names), err
    assert "Traceback" not in err and out.count("\ninference: ") == 2
    for name in names:
        st = Store(tmp_path / "data", name).status()
        assert st.processing_posts == 0 and st.pending_posts > 0 and st.output_rows_unexported == 0
        uris = _output_uris(tmp_path, name)
        assert len(uris) == len(set(uris)) == st.output_rows_exported


def test_a_pool_never_grows_into_room_another_runs_minimum_needs(tmp_path):
    from jobs.config import load_config
    from jobs.stages.inference import pool_caps

    cfg = _two_integrations(tmp_path, tmp_path / "posts", VALENCE, {"type": "vader"})
    raw = yaml.safe_load(cfg.read_text())
    raw["integrations"][KEYWORDS]["actors"] = {"min": 1, "max": 8}   # 0.5 CPU each
    raw["integrations"][VALENCE]["actors"] = {"min": 2, "max": 8}    # 0.5 CPU each
    cfg.write_text(yaml.safe_dump(raw))
    config = load_config(cfg)

    class Cluster:
        def __init__(self, cpus: float) -> None:
            self.cpus = cpus

        def cluster_resources(self) -> dict[str, float]:
            return {"CPU": self.cpus}

    # 4 CPUs: keywords may use 4 - (2 x 0.5 + 0.25) - 0.25 = 2.5 CPUs (5 actors), valence
    # 4 - (0.5 + 0.25) - 0.25 = 3 CPUs (6 actors); a lone run is not capped.
    assert pool_caps(Cluster(4), config, [KEYWORDS, VALENCE]) == {KEYWORDS: 5, VALENCE: 6}
    assert pool_caps(Cluster(1), config, [KEYWORDS, VALENCE]) == {KEYWORDS: 1, VALENCE: 2}
    assert pool_caps(Cluster(4), config, [KEYWORDS]) == {KEYWORDS: None}
