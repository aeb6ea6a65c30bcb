"""Faults from the field (issue 20): secrets echoed back by a server, endless back-off, relabel
races, bad bytes, a locked queue file under the heartbeat, slow models, and the true causes of
full disks, corrupt files and absurd configs. Each test breaks something real."""
from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import yaml

from actors.queue_actor import QueueActor
from classifiers.registry import build_classifier
from classifiers.poison import classify_isolating
from classifiers.protocol import PostFailure
from jobs.backfill import main
from tests.queue_helpers import Store, queued_uris
from queue_store.lease_holder import LeaseHolder
from tests.cli_helpers import write_config, write_posts
from tests.conftest import make_posts
from tests.fake_hosted import KEY, FakeHosted, chat_classifier

NAME = "ml_inference_intergroup"
ROOT = Path(__file__).resolve().parents[1]
PROMPT = str(ROOT / "configs" / "prompts" / "intergroup.yaml")




def _holds(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


# -- 1. secrets ------------------------------------------------------------------------------
def test_a_server_echoing_the_request_never_puts_the_key_in_a_reason(key):
    with FakeHosted() as server:
        chat = chat_classifier(server, timeout_s=2.0).classify(["ECHO my post about groups"])
        persp = build_classifier("perspective_api", {
            "api_key_env": "TEST_PERSPECTIVE_KEY", "base_url": server.perspective_url,
            "attributes": ["TOXICITY"], "requests_per_second": 50,
            "timeout_s": 2.0}).classify(["ECHO hello there"])
    for [row] in (chat, persp):
        assert isinstance(row, PostFailure), row
        assert KEY not in row.reason and "***" in row.reason, row.reason
    assert "Bearer ***" in chat[0].reason and "key=***" in persp[0].reason


@pytest.mark.slow
def test_echoed_keys_reach_no_file_log_summary_or_console(ray_session, tmp_path, capsys,
                                                         monkeypatch):
    """Both hosted classifiers through the whole CLI against an echoing server: the key is in
    no dead letter, queue file, run summary, parquet, Ray session log or console line."""
    monkeypatch.setenv("TEST_LLM_KEY", KEY)
    monkeypatch.setenv("TEST_PERSPECTIVE_KEY", KEY)
    import pyarrow as pa

    posts = tmp_path / "posts" / "partition_date=2024-10-01"
    posts.mkdir(parents=True)
    texts = [f"ECHO post {i} about groups" if i % 5 == 0 else f"post {i} about my cat"
             for i in range(40)]
    pq.write_table(pa.table({"uri": [f"at://echo/{i}" for i in range(40)], "text": texts,
                             "preprocessing_timestamp": ["2024-10-01-10:00:00"] * 40}),
                   posts / "part-0.parquet")
    with FakeHosted() as server:
        for clf in ({"type": "openai_chat", "params": {
                        "base_url": server.base_url, "model": "tiny",
                        "api_key_env": "TEST_LLM_KEY", "prompt_file": PROMPT,
                        "json_mode": True, "timeout_s": 2.0}},
                    {"type": "perspective_api", "params": {
                        "base_url": server.perspective_url, "attributes": ["TOXICITY"],
                        "api_key_env": "TEST_PERSPECTIVE_KEY", "requests_per_second": 100}}):
            cfg = write_config(tmp_path / clf["type"], clf, posts=tmp_path / "posts")
            code = main(["--config", str(cfg), "-r", "posts", "--add-to-queue", "-i", "g",
                         "--run-integrations", "--write-cache", "all", "--quiet"])
            out = capsys.readouterr()
            assert code == 3, out.err  # the echoed posts were dead-lettered (max_attempts 2)
            assert KEY not in out.out + out.err
            shown = main(["--config", str(cfg), "--show-dead", "20"])
            dead = capsys.readouterr().out
            assert shown == 0 and dead.count("***") >= 8 and KEY not in dead
    assert _holds(tmp_path, KEY.encode()) == []
    logs = Path(ray_session._private.worker._global_node.get_session_dir_path()) / "logs"
    assert logs.is_dir() and _holds(logs, KEY.encode()) == []


# -- 2. bounded back-off ---------------------------------------------------------------------
def test_retry_after_of_a_billion_seconds_is_capped_and_the_post_gives_up(key):
    with FakeHosted() as server:
        clf = chat_classifier(server, timeout_s=2.0, max_retry_wait_s=0.2, retry_budget_s=1.5,
                              max_retries=50)
        seen: list[dict] = []
        watcher = threading.Thread(target=lambda: [seen.append(clf.status()) or
                                                   time.sleep(0.1) for _ in range(10)])
        watcher.start()
        t0 = time.monotonic()
        [row] = clf.classify(["FOREVER429 a post"])
        took = time.monotonic() - t0
        watcher.join()
    assert isinstance(row, PostFailure) and took < 5, (row, took)
    assert "1e+09" in row.reason and "max_retry_wait_s" in row.reason
    assert any("rate_limit" in s and "1e+09" in s["rate_limit"] for s in seen), seen


def test_a_retry_waits_at_least_retry_after(key):
    with FakeHosted() as server:
        answer = chat_classifier(server, timeout_s=2.0).classify(["RATE429 about groups"])
        assert answer == [{"label": 1}]
        [first, second] = server.times_by_text[next(t for t in server.times_by_text
                                                    if "RATE429" in t)]
    assert second - first >= 1.0  # the server said Retry-After: 1


@pytest.mark.slow
def test_endless_rate_limits_end_in_dead_letters_not_a_stalled_run(inprocess, tmp_path,
                                                                  monkeypatch):
    from tests.pipeline_helpers import run_inference
    from tests.pipeline_helpers import enqueue, pipeline_config

    monkeypatch.setenv("TEST_LLM_KEY", KEY)
    posts = make_posts(40)
    for p in posts[::4]:
        p["text"] = "FOREVER429 " + p["text"]
    with FakeHosted() as server:
        cfg = pipeline_config(tmp_path, {"type": "openai_chat", "params": {
            "base_url": server.base_url, "model": "tiny", "api_key_env": "TEST_LLM_KEY",
            "prompt_file": PROMPT, "json_mode": True, "max_retry_wait_s": 0.5,
            "retry_budget_s": 2.0}}, batch_size=20)
        cfg.pipeline.no_progress_timeout_s = 15
        cfg.queue.max_attempts = 2
        enqueue(tmp_path, posts, batch_size=20, config=cfg)
        summary = run_inference(cfg, NAME, quiet=True)
    assert summary.labelled == 30 and summary.dead_lettered == 10
    [reason] = {d.reason for d in Store(tmp_path, NAME).dead_letters(limit=20)}
    assert "429" in reason and "1e+09" in reason


# -- 3. one label per (uri, config_hash) -----------------------------------------------------
def _relabel_config(tmp_path, marker: str) -> Path:
    return write_config(tmp_path, {"type": "tests.plugins:KeywordClassifier",
                                   "params": {"poison_marker": marker}})


def _labels_by_version_of(tmp_path, config: Path) -> list[str]:
    from jobs.config import load_config

    version = load_config(config).integrations[NAME].classifier.config_hash
    return _labels_by_version(tmp_path).get(version, [])


def _labels_by_version(tmp_path) -> dict[str, list[str]]:
    table = pads.dataset(tmp_path / "data" / NAME, partitioning="hive").to_table(
        columns=["uri", "config_hash"])
    by: dict[str, list[str]] = {}
    for uri, h in zip(table.column("uri").to_pylist(), table.column("config_hash").to_pylist()):
        by.setdefault(h, []).append(uri)
    return by


@pytest.mark.slow
def test_relabel_after_a_config_change_labels_each_post_once_per_version(inprocess, tmp_path,
                                                                        capsys):
    write_posts(tmp_path, 300, days=1)
    x = _relabel_config(tmp_path, "MARKER-X")
    assert main(["--config", str(x), "-r", "posts", "--add-to-queue", "-i", "g", "--quiet"]) == 0
    y = _relabel_config(tmp_path, "MARKER-Y")  # the labels changed before X ever ran
    assert main(["--config", str(y), "-r", "posts", "--add-to-queue", "-i", "g",
                 "--relabel-other-versions", "--run-integrations", "--write-cache", "all",
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "queued for another version" in err  # X's batches were left for an X run
    x = _relabel_config(tmp_path, "MARKER-X")
    assert main(["--config", str(x), "-i", "g", "--run-integrations", "--write-cache", "all",
                 "--quiet"]) == 0
    by = _labels_by_version(tmp_path)
    assert len(by) == 2
    counts = {len(uris) for uris in by.values()}
    assert all(len(uris) == len(set(uris)) for uris in by.values()), \
        {h: len(u) - len(set(u)) for h, u in by.items()}
    assert len(counts) == 1 and counts.pop() > 280  # the same posts, once per version


@pytest.mark.slow
def test_a_normal_run_racing_a_relabel_run_labels_each_post_once_per_version(
        inprocess, ray_session, tmp_path):
    write_posts(tmp_path, 600, days=2)
    x = _relabel_config(tmp_path / "x", "MARKER-X")
    y = _relabel_config(tmp_path / "y", "MARKER-Y")
    for cfg in (x, y):  # both configs on one data dir and one posts folder
        raw = yaml.safe_load(cfg.read_text())
        raw["data_dir"], raw["posts"]["path"] = str(tmp_path / "data"), str(tmp_path / "posts")
        raw["integrations"][NAME]["classifier"]["params"]["delay_s"] = 0.02
        cfg.write_text(yaml.safe_dump(raw))
    address = ray_session.get_runtime_context().gcs_address
    env = {**__import__("os").environ, "RAY_ADDRESS": address, "PYTHONPATH": str(ROOT)}
    common = ["-r", "posts", "--add-to-queue", "-i", "g", "--run-integrations",
              "--write-cache", "all", "--quiet"]
    procs = [subprocess.Popen([sys.executable, "-m", "jobs.backfill", "--config", str(x),
                               *common], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True),
             subprocess.Popen([sys.executable, "-m", "jobs.backfill", "--config", str(y),
                               *common, "--relabel-other-versions"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1][-2000:] for r in results]
    for cfg in (x, y):  # whatever either run left for the other version
        assert main(["--config", str(cfg), "-i", "g", "--run-integrations", "--write-cache",
                     "all", "--quiet"]) == 0
    by = _labels_by_version(tmp_path)
    for uris in by.values():  # whichever queued a post first, no version labels it twice
        assert len(uris) == len(set(uris))
    relabelled = _labels_by_version_of(tmp_path, y)
    assert len(relabelled) > 550  # the relabel run queued every post for its version


# -- 4. bad bytes and other encodings --------------------------------------------------------
def test_one_invalid_utf8_byte_rejects_one_post_and_categories_are_text(tmp_path, capsys):
    import pandas as pd

    day = tmp_path / "posts" / "partition_date=2024-10-01"
    day.mkdir(parents=True)
    texts = [f"a fine post number {i}".encode() for i in range(200)]
    texts[17] = b"broken \xff\xfe bytes in this post"
    pq.write_table(pa.table({
        "uri": [f"at://bytes/{i}" for i in range(200)],
        "text": pa.array(texts, pa.binary()).view(pa.string()),
        "preprocessing_timestamp": ["2024-10-01-09:00:00"] * 200}), day / "a.parquet")
    frame = pd.DataFrame({"uri": [f"at://cat/{i}" for i in range(50)],
                          "text": [f"category post {i % 5} text" for i in range(50)],
                          "preprocessing_timestamp": ["2024-10-01"] * 50})
    frame.astype("category").to_parquet(day / "b.parquet")
    day2 = tmp_path / "posts" / "partition_date=2024-10-02"  # a later day still goes in
    day2.mkdir()
    pq.write_table(pa.table({"uri": ["at://later/1"], "text": ["a post from the next day"],
                             "preprocessing_timestamp": ["2024-10-02"]}), day2 / "c.parquet")
    cfg = write_config(tmp_path, {"type": "constant"})
    assert main(["--config", str(cfg), "-r", "posts", "--add-to-queue", "-i", "g"]) == 0
    [summary] = [json.loads(p.read_text()) for p in (tmp_path / "data" / "runs").glob("*")]
    assert summary["enqueued"] == 199 + 50 + 1
    assert summary["invalid_by_reason"] == {"text is not valid UTF-8": 1}


# -- 5. a heartbeat that survives ------------------------------------------------------------
def _hold_write_lock(path: Path, seconds: float) -> threading.Thread:
    def hold():
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        conn.execute("BEGIN IMMEDIATE")
        time.sleep(seconds)
        conn.execute("ROLLBACK")
        conn.close()

    thread = threading.Thread(target=hold)
    thread.start()
    return thread


def _leased_actor(tmp_path, lease_seconds: float) -> tuple[QueueActor, Store]:
    store = Store(tmp_path, NAME)
    store.enqueue(make_posts(20), batch_size=10, config_hash="v")
    actor = QueueActor(str(tmp_path), NAME, 3, lease_seconds,
                       LeaseHolder.this_process("r").encode(), "v")
    assert len(actor.next_batches(1)) == 1
    return actor, store


def _expiry(store: Store) -> float:
    return store.conn.execute(f"SELECT lease_expires FROM {store.tables['input']} WHERE "
                              "status = 'processing'").fetchone()[0]


def test_the_heartbeat_survives_a_locked_queue_file(tmp_path, monkeypatch):
    import queue_store.schema as schema

    monkeypatch.setattr(schema, "BUSY_TIMEOUT_MS", 400)  # a short wait for the lock
    actor, store = _leased_actor(tmp_path, lease_seconds=3.0)
    try:
        _hold_write_lock(store.path, 1.5).join()  # another process holds the write lock
        before = _expiry(store)
        deadline = time.monotonic() + 20
        while _expiry(store) <= before:  # the heartbeat renews again once the lock is free
            assert time.monotonic() < deadline, "the heartbeat stopped renewing"
            time.sleep(0.1)
        assert actor._heartbeat.is_alive() and actor.get_stats().stopped_claiming is None
    finally:
        actor.stop()


def test_leases_not_renewed_for_too_long_stop_the_claiming(tmp_path):
    actor, store = _leased_actor(tmp_path, lease_seconds=2.0)
    try:
        _hold_write_lock(store.path, 4.0).join()
        why = actor.get_stats().stopped_claiming
        assert why and "could not be renewed" in why and "locked" in why, why
        assert actor.next_batches(1) == [] and actor.work_state() == "done"
    finally:
        actor.stop()


# -- 6. slow models make progress ------------------------------------------------------------
@pytest.mark.slow
def test_a_slow_model_with_the_default_block_size_makes_progress(ray_session, tmp_path):
    """~0.5 s per classify call of 50 posts, the default 1000-post queue batches and 512 KiB
    read blocks (one block holds them all: 20 calls, 10 s) and a no-progress limit of 4 s:
    results leave the stage every call, so the run moves."""
    from tests.pipeline_helpers import run_inference
    from tests.pipeline_helpers import PLUGIN, enqueue, output_uris, pipeline_config

    cfg = pipeline_config(tmp_path, {"type": PLUGIN, "params": {"delay_s": 0.5}},
                          batch_size=50)
    cfg.pipeline.no_progress_timeout_s = 4
    assert cfg.pipeline.read_block_bytes == 512 << 10
    enqueue(tmp_path, make_posts(1000), batch_size=1000, config=cfg)
    summary = run_inference(cfg, NAME, quiet=True)
    assert summary.labelled == 1000 and len(set(output_uris(tmp_path))) == 1000


# -- 7. true causes --------------------------------------------------------------------------
def _errors(capsys, argv: list[str], code: int) -> list[str]:
    got = main(argv)
    err = capsys.readouterr().err
    assert got == code, err
    assert "Traceback" not in err and "\x1b[" not in err, err
    return [x for x in err.splitlines() if x.startswith("error:")]


def test_a_corrupt_queue_file_is_found_before_the_pipeline_starts(tmp_path, capsys):
    cfg = write_config(tmp_path, {"type": "constant"})
    queue = tmp_path / "data" / "queue" / f"{NAME}.db"
    queue.parent.mkdir(parents=True)
    queue.write_bytes(b"not a database at all " * 200)
    [line] = _errors(capsys, ["--config", str(cfg), "-i", "g", "--run-integrations"], 2)
    assert str(queue) in line


@pytest.mark.parametrize("ray_block,needle", [({"object_store_memory": 1}, "object_store_memory"),
                                              ({"num_cpus": 0}, "num_cpus"),
                                              ({"num_cpu": 2}, "num_cpu: unknown key")])
def test_absurd_ray_values_are_config_errors(tmp_path, capsys, ray_block, needle):
    cfg = write_config(tmp_path, {"type": "constant"})
    raw = yaml.safe_load(cfg.read_text())
    raw["ray"] = ray_block
    cfg.write_text(yaml.safe_dump(raw))
    [line] = _errors(capsys, ["--config", str(cfg), "-i", "g", "--run-integrations"], 2)
    assert f"ray.{needle}" in line


def test_output_inside_the_posts_folder_is_refused(tmp_path, capsys):
    posts = write_posts(tmp_path, 50, days=1)
    cfg = write_config(tmp_path, {"type": "constant"})
    raw = yaml.safe_load(cfg.read_text())
    raw["output_dir"] = str(posts)
    cfg.write_text(yaml.safe_dump(raw))
    [line] = _errors(capsys, ["--config", str(cfg), "-r", "posts", "--add-to-queue", "-i", "g",
                              "--run-integrations"], 2)
    assert "overlap" in line and "read labels back as posts" in line
    assert not (tmp_path / "data").exists()


def _tmpfs(where: Path, size: str) -> Path:
    where.mkdir(parents=True)
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.decode().strip()}")
    return where


@pytest.fixture
def small_disk(tmp_path):
    disk = _tmpfs(tmp_path / "small", "768k")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_full_data_disk_says_so(tmp_path, capsys, small_disk):
    write_posts(tmp_path, 3000, days=1)
    cfg = write_config(tmp_path, {"type": "constant"})
    [line] = _errors(capsys, ["--config", str(cfg), "--data-dir", str(small_disk), "-r",
                              "posts", "--add-to-queue", "-i", "g", "--quiet"], 2)
    assert "disk is full" in line and str(small_disk) in line
    assert "rollback" not in line.lower()


@pytest.mark.slow
def test_a_full_output_disk_names_the_path_and_the_errno(inprocess, tmp_path, capsys,
                                                        small_disk):
    import os

    day = tmp_path / "posts" / "partition_date=2024-10-01"
    day.mkdir(parents=True)  # posts of random text: their parquet cannot be compressed away
    pq.write_table(pa.table({
        "uri": [f"at://big/{i}" for i in range(3000)],
        "text": [os.urandom(600).hex() for _ in range(3000)],
        "preprocessing_timestamp": ["2024-10-01"] * 3000}), day / "p.parquet")
    cfg = write_config(tmp_path, {"type": "constant"})
    raw = yaml.safe_load(cfg.read_text())
    raw["output_dir"] = str(small_disk)
    cfg.write_text(yaml.safe_dump(raw))
    lines = _errors(capsys, ["--config", str(cfg), "-r", "posts", "--add-to-queue", "-i", "g",
                             "--run-integrations", "--quiet"], 1)
    assert len(lines) == 1 and str(small_disk) in lines[0] and "errno 28" in lines[0], lines
    st = Store(tmp_path / "data", NAME).status()
    assert st.processing_posts == 0  # claims handed back; labelled rows stay queued


# -- 8. the planted bugs ---------------------------------------------------------------------
def test_a_reap_requeues_a_dead_holders_leases_and_leaves_a_live_ones(tmp_path):
    store = Store(tmp_path, NAME)
    store.enqueue(make_posts(50), batch_size=10)
    live = store.claim(1, lease_seconds=3600, owner=LeaseHolder.this_process("me").encode())
    dead = subprocess.run([sys.executable, "-m", "tests.queue_procs", "claim_as_this_process",
                           str(tmp_path), str(tmp_path / "dead.json")], cwd=ROOT)
    assert dead.returncode == 0  # its process is gone; its hour-long leases stay
    res = store.reap()  # both holders' leases exist right now
    assert res.dead_holder_batches == 3 and res.requeued_batches == 3
    st = store.status()
    assert st.processing_batches == 1 and st.pending_batches == 4
    [(held,)] = store.conn.execute(f"SELECT id FROM {store.tables['input']} WHERE "
                                   "status = 'processing'").fetchall()
    assert held == live[0].batch_id


class NaNInList:
    def classify(self, texts):
        return [{"scores": [0.5, math.nan] if "bad" in t else [0.1, 0.2]} for t in texts]


def test_nan_inside_a_list_fails_only_its_post():
    out = classify_isolating(NaNInList(), ["good one", "bad one", "good two"])
    assert [o.ok for o in out] == [True, False, True]
    assert "non-finite" in out[1].reason


def test_prompt_file_contents_change_config_hash_and_its_path_does_not(tmp_path):
    import shutil

    from classifiers.config_hash import config_hash

    prompt = tmp_path / "prompt.yaml"
    shutil.copy(PROMPT, prompt)
    params = {"base_url": "http://x/v1", "model": "m", "prompt_file": str(prompt)}
    h = config_hash("openai_chat", params)
    moved = tmp_path / "moved.yaml"
    shutil.copy(prompt, moved)
    assert config_hash("openai_chat", {**params, "prompt_file": str(moved)}) == h
    prompt.write_text(prompt.read_text().replace("Post:", "The post:"))
    assert config_hash("openai_chat", params) != h


def test_exactly_five_characters_is_a_valid_post(tmp_path):
    store = Store(tmp_path, NAME)
    res = store.enqueue([{"uri": "a", "text": "abcde", "preprocessing_timestamp": "2024-10-01"},
                         {"uri": "b", "text": " abcd ", "preprocessing_timestamp": "2024-10-01"}])
    assert res.enqueued_posts == 1 and [i.uri for i in res.invalid] == ["b"]


def test_a_failed_enqueue_leaves_nothing_in_the_ledger(tmp_path):
    store = Store(tmp_path, NAME)
    store.conn.execute(f"CREATE TRIGGER boom BEFORE INSERT ON {store.tables['input']} "
                       "BEGIN SELECT RAISE(ABORT, 'disk trouble'); END")
    with pytest.raises(Exception, match="disk trouble"):
        store.enqueue(make_posts(50), batch_size=10)
    store.conn.execute("DROP TRIGGER boom")
    assert not queued_uris(store, [p["uri"] for p in make_posts(50)])
    assert store.enqueue(make_posts(50), batch_size=10).enqueued_posts == 50
