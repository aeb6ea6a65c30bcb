"""Hosted models through the whole exactly-once pipeline, against a local HTTP server."""
from __future__ import annotations

import gc
import os
import time
from pathlib import Path

import pytest

from jobs.backfill import main
from tests.pipeline_helpers import run_inference
from tests.queue_helpers import Store
from tests.cli_helpers import write_config
from tests.conftest import make_posts
from tests.fake_hosted import KEY, FakeHosted
from jobs.config import load_config
from tests.pipeline_helpers import NAME, output_table, output_uris, pipeline_config, version_of

pytestmark = [pytest.mark.slow]
PROMPT = str(Path(__file__).resolve().parents[1] / "configs" / "prompts" / "intergroup.yaml")


def _params(server, **kw):
    return {"base_url": server.base_url, "model": "tiny", "api_key_env": "TEST_LLM_KEY",
            "prompt_file": PROMPT, "json_mode": True, "timeout_s": 1.0, "max_retries": 4,
            "max_concurrency": 16, "cost_per_1k_prompt_tokens": 1.0, **kw}


def _files_hold(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def _all_cpus_free_within(ray, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def test_every_post_once_bad_answers_dead_lettered_key_nowhere(inprocess, tmp_path,
                                                              monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", KEY)
    posts = make_posts(300)
    for i, marker in ((3, "RATE429"), (50, "ERR500"), (120, "SLOW"), (200, "BADJSON"),
                      (250, "OUTOFSET")):
        posts[i]["text"] = f"{marker} {posts[i]['text']}"
    with FakeHosted(slow_s=3.0) as server:
        cfg = pipeline_config(tmp_path, {"type": "openai_chat", "params": _params(server)},
                              batch_size=100)
        cfg.queue.max_attempts = 2
        Store(tmp_path, NAME).enqueue(posts, batch_size=100, config_hash=version_of(cfg))
        summary = run_inference(cfg, NAME)
    uris = output_uris(tmp_path)
    assert len(uris) == len(set(uris)) == 298
    dead = {d.uri: d.reason for d in Store(tmp_path, NAME).dead_letters()}
    assert set(dead) == {posts[200]["uri"], posts[250]["uri"]}
    assert "label: one, I think" in dead[posts[200]["uri"]]
    assert '{"label": 7}' in dead[posts[250]["uri"]]
    assert summary.usage["requests_retried"] >= 4 and summary.usage["requests_ok"] >= 300
    assert summary.usage["prompt_tokens"] > 0 and summary.estimated_cost > 0
    labels = output_table(tmp_path).column("label")
    assert str(labels.type) == "int64" and set(labels.to_pylist()) <= {0, 1}
    assert _files_hold(tmp_path, KEY.encode()) == []  # not in queue, runs, parquet


def test_rejected_key_stops_the_run_with_exit_2_and_leaves_posts_claimable(
        ray_session, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", KEY)
    with FakeHosted(unauthorized=True) as server:
        cfg = write_config(tmp_path, {"type": "openai_chat", "params": _params(server)})
        version = load_config(cfg).integrations[NAME].classifier.config_hash
        Store(tmp_path / "data", NAME).enqueue(make_posts(200), batch_size=100,
                                                    config_hash=version)
        t0 = time.monotonic()
        gc.disable()  # a process whose cycle collector has not run since (it runs when it likes)
        try:
            code = main(["--config", str(cfg), "-i", "g", "--run-integrations", "--quiet"])
            # The stopped run's classifier actors are gone with it: a process that goes on
            # (a notebook, a command's next integration) has the CPUs they held.
            freed = _all_cpus_free_within(ray_session, 60)
        finally:
            gc.enable()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "TEST_LLM_KEY" in err[0] and "401" in err[0]
    assert time.monotonic() - t0 < 120
    assert freed, ray_session.available_resources()
    st = Store(tmp_path / "data", NAME).status()
    assert st.pending_posts == 200 and st.processing_posts == 0 and st.dead_posts == 0
    assert _files_hold(tmp_path, KEY.encode()) == []
    assert os.environ["TEST_LLM_KEY"] == KEY
