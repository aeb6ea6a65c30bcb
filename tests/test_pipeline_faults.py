"""The pipeline under the faults that used to break it: a post that kills the classifier's
process, a classifier that cannot be built, a SIGKILLed or SIGTERMed driver rerun at once
(also one killed part-way through its streamed enqueue), and the same full command started
twice at once."""
from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.stages.errors import RunStopped
from tests.pipeline_helpers import run_inference
from tests.queue_helpers import Store, input_uris, queued_uris
from tests.cli_helpers import ctrl_c_as_in_a_terminal, write_config, write_posts
from tests.conftest import make_posts
from tests.pipeline_helpers import (NAME, PLUGIN, driver_command, enqueue, output_uris,
                                    pipeline_config, queue_status, version_of)

pytestmark = [pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


def _default_config(data_dir, classifier):
    """The shipped defaults (batch sizes, lease, attempts), only the classifier chosen."""
    from jobs.config import parse_config

    return parse_config({"data_dir": str(data_dir), "integrations": {NAME: {
        "code": "g", "num_cpus": 0.5, "classifier": classifier}}})


def test_post_that_kills_the_process_is_isolated_in_one_run(ray_session, tmp_path):
    posts = make_posts(1000)
    posts[611]["text"] = "this post KILLME takes the process down"
    cfg = _default_config(tmp_path, {"type": PLUGIN, "params": {"kill_marker": "KILLME"}})
    # calls of 16 posts: 4 process deaths to find the post, not 8 (each a new actor process)
    cfg.integrations[NAME].batch_size = 16
    enqueue(tmp_path, posts, 1000, cfg)
    t0 = time.monotonic()
    summary = run_inference(cfg, NAME)
    seconds = time.monotonic() - t0
    uris = output_uris(tmp_path)
    assert len(uris) == len(set(uris)) == 999 and posts[611]["uri"] not in uris
    [dead] = Store(tmp_path, NAME).dead_letters()
    assert dead.uri == posts[611]["uri"]
    assert dead.reason == "classifier process died on this post"
    st = queue_status(tmp_path)
    assert st.pending_posts == st.processing_posts == 0
    assert summary.labelled == 999 and summary.dead_lettered == 1
    # Halving a call of 16 to its killer takes 5 deaths (7 measured: Ray resubmits too); a
    # journal that missed the ends of the calls done before would count each of them (197).
    assert summary.process_deaths < 20, summary.process_deaths
    assert seconds < 180, seconds
    print(f"\nkiller post: rows {len(uris)}, distinct {len(set(uris))}, dead 1, "
          f"{summary.process_deaths} process deaths, {seconds:.1f} s")


def test_classifier_that_cannot_be_built_stops_with_its_own_error(inprocess, tmp_path):
    cfg = pipeline_config(tmp_path, {"type": PLUGIN,
                                     "params": {"fail_init": "labels.yaml is missing"}})
    enqueue(tmp_path, make_posts(300), 1000, cfg)
    t0 = time.monotonic()
    with pytest.raises(RunStopped, match="FileNotFoundError: labels.yaml is missing") as stop:
        run_inference(cfg, NAME)
    assert stop.value.exit_code == 2 and stop.value.summary.labelled == 0
    assert time.monotonic() - t0 < 60
    st = queue_status(tmp_path)
    assert st.pending_posts == 300 and st.processing_posts == 0 and st.dead_posts == 0


def test_a_queue_with_nothing_claimable_starts_no_classifier(inprocess, tmp_path):
    """Nothing pending of the run's version (queued for another one, then all labelled): the
    run ends without an actor pool — a classifier that cannot even be built is never built."""
    good = pipeline_config(tmp_path)
    broken = pipeline_config(tmp_path, {"type": PLUGIN,
                                        "params": {"fail_init": "would load a model"}})
    enqueue(tmp_path, make_posts(300), 1000, good)
    assert run_inference(broken, NAME).labelled == 0  # 300 pending, of another version
    assert run_inference(good, NAME).labelled == 300
    assert run_inference(broken, NAME).labelled == 0  # nothing pending at all
    st = queue_status(tmp_path)
    assert st.pending_posts == st.processing_posts == st.dead_posts == 0
    assert len(output_uris(tmp_path)) == 300


def _wait_for_progress(data_dir, proc, deadline_s=120):
    deadline = time.monotonic() + deadline_s
    while True:  # stop it once some batches are done and others are leased
        st = queue_status(data_dir)
        if st.output_rows_unexported + st.output_rows_exported >= 500 and st.processing_posts:
            return
        assert time.monotonic() < deadline and proc.poll() is None, "driver never got going"
        time.sleep(0.1)


def _wait_until_the_actors_of_other_jobs_are_gone(ray, deadline_s: float = 120) -> None:
    """Until Ray has ended the pipeline actors of drivers that died (it does so once it sees
    a driver gone): none of them may finish a dead run's work behind a rerun's back."""
    from ray._private import state

    ours, deadline = ray.get_runtime_context().get_job_id(), time.monotonic() + deadline_s
    while [a for a in state.actors().values()
           if a["State"] != "DEAD" and a["JobID"] != ours
           and (a["ActorClassName"] in ("QueueActor", "WriterActor")
                or "ClassifierStage" in a["ActorClassName"])]:
        assert time.monotonic() < deadline, "a dead driver's actors were never ended"
        time.sleep(0.2)


def test_driver_sigkilled_then_immediate_rerun_finishes_with_default_lease(
        inprocess, ray_session, tmp_path):
    posts = make_posts(4000)
    # The posts of the queue's batches 4 to 7 wait for go_on: batch 0's blocks reach the
    # actors before any of them, so it completes whichever actors they went to (holding each
    # actor after some calls instead, no batch completed when its blocks were spread over
    # both actors: seen in CI, "driver never got going").
    for post in posts[2000:]:
        post["text"] += " HOLD"
    go_on = tmp_path / "go-on"
    slow = pipeline_config(tmp_path, {"type": PLUGIN, "params": {
        "delay_s": 0.3, "hold_marker": "HOLD", "hold_until_file": str(go_on)}},
        batch_size=250)
    enqueue(tmp_path, posts, batch_size=500, config=slow)
    slow.queue.lease_seconds = 60  # the default: the rerun must not wait for it
    slow.pipeline.read_block_bytes = 16_384  # a block per claim: results come in steadily
    address = ray_session.get_runtime_context().gcs_address
    proc = subprocess.Popen(driver_command(slow, address, tmp_path / "cfg.json"), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_progress(tmp_path, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # The dead run's actors hold its claims (its classifier waits) until Ray ends them; had
    # they gone on, they could finish the claims themselves and leave the rerun none to take
    # back (seen: reaped_dead_holder_batches 0, every post still labelled once).
    _wait_until_the_actors_of_other_jobs_are_gone(ray_session)
    assert queue_status(tmp_path).processing_posts > 0  # its leases are still there, unexpired
    go_on.touch()
    t0 = time.monotonic()
    rerun = run_inference(slow, NAME)  # the same command: no sleep, no SQL, one rerun
    assert rerun.reaped_dead_holder_batches > 0
    uris = output_uris(tmp_path)
    assert len(uris) == len(set(uris)) == 4000
    st = queue_status(tmp_path)
    assert st.pending_posts == st.processing_posts == st.dead_posts == 0
    print(f"\nSIGKILL + immediate rerun: rows {len(uris)}, distinct {len(set(uris))}, dead 0, "
          f"rerun {time.monotonic() - t0:.1f} s (lease 60 s)")


def _cli(cfg: Path, address: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, RAY_ADDRESS=address, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "jobs.backfill", "--config", str(cfg),
                             *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_as_in_a_terminal)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_hands_claims_back_exports_what_was_labelled_and_says_so(
        ray_session, tmp_path, sig):
    """Ctrl-C or SIGTERM mid-run: one ``interrupted:`` line and no traceback, the partial
    summary, every completed label exported, every claim handed back."""
    write_posts(tmp_path, 3000, days=2)
    go_on = tmp_path / "go-on"  # each classifier actor labels 7 calls, then waits for it
    # 7 calls of 40 posts: two queue batches of 100 completed and most of a third labelled
    cfg = write_config(tmp_path, {"type": PLUGIN, "params": {
        "hold_after_calls": 7, "hold_until_file": str(go_on)}}, batch_size=40)
    address = ray_session.get_runtime_context().gcs_address
    proc = _cli(cfg, address, "-r", "posts", "--add-to-queue", "-i", "g",
                "--run-integrations")
    deadline = time.monotonic() + 120
    while True:  # some batches completed, others in flight (held there until go_on)
        if (tmp_path / "data" / "queue").exists():
            st = queue_status(tmp_path / "data")
            if st.output_rows_unexported + st.output_rows_exported >= 200 and st.processing_posts:
                break
        assert time.monotonic() < deadline and proc.poll() is None, "driver never got going"
        time.sleep(0.1)
    proc.send_signal(sig)
    time.sleep(1)  # the signal is handled (claiming stops) before the held calls go on
    go_on.touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith((
        "[", "data:", "posts:", "output:", "ray:"))]  # progress and where-it-runs lines
    assert lines == [x for x in lines if x.startswith("interrupted:")] and len(lines) == 1, err
    assert "claims were handed back" in lines[0] and "Traceback" not in err
    assert "\ninference: ml_inference_intergroup" in out and "labelled" in out, out
    # The distribution is of what was labelled, not of results that came for batches the
    # interrupt left unfinished (handed back, labelled again by the rerun).
    [labelled] = re.findall(r"^labelled +(\d+)$", out, re.M)
    [shares] = re.findall(r"^label_distribution +(\{.*\})$", out, re.M)
    assert sum(ast.literal_eval(shares).values()) == int(labelled), out
    st = queue_status(tmp_path / "data")
    assert st.processing_posts == 0 and st.pending_posts > 0  # claimable at once
    assert st.output_rows_unexported == 0 and st.output_rows_exported >= 200  # exported
    import pyarrow.dataset as pads

    written = pads.dataset(tmp_path / "data" / NAME, partitioning="hive").count_rows()
    assert written == st.output_rows_exported
    enqueued = len(queued_uris(Store(tmp_path / "data", NAME),
                               input_uris(tmp_path / "posts")))
    assert st.pending_posts + st.output_rows_exported == enqueued


def test_full_command_killed_mid_enqueue_while_inference_runs_then_rerun_labels_each_once(
        ray_session, tmp_path):
    """Streaming: one command's inference claims each committed enqueue chunk while its
    enqueue is still running. SIGKILL it there — half the posts queued, some labelled, some
    leased — and the same command again queues the rest and labels every valid post once."""
    import yaml

    write_posts(tmp_path, 4000, days=4)
    cfg = write_config(tmp_path, {"type": PLUGIN, "params": {"delay_s": 0.2}})
    raw = yaml.safe_load(cfg.read_text())
    raw["queue"]["enqueue_chunk_posts"] = 1000
    cfg.write_text(yaml.safe_dump(raw))
    address = ray_session.get_runtime_context().gcs_address
    command = ["-r", "posts", "--add-to-queue", "-i", "g", "--run-integrations", "--quiet"]
    env = dict(os.environ, RAY_ADDRESS=address, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "tests.slow_feed_proc", "2", "--config",
                             str(cfg), *command], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    data = tmp_path / "data"
    deadline = time.monotonic() + 120
    while True:  # the enqueue is stuck after 2 of 4 chunks; inference labels what it queued
        if (data / "queue").exists():
            st = queue_status(data)
            if st.output_rows_unexported + st.output_rows_exported >= 500 and \
                    st.processing_posts:
                break
        assert time.monotonic() < deadline and proc.poll() is None, \
            "nothing was labelled while the enqueue ran"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    st = queue_status(data)
    queued = st.pending_posts + st.processing_posts + st.output_rows_unexported + \
        st.output_rows_exported
    assert queued <= 2000 and st.processing_posts  # killed part-way, leases held
    rerun = _cli(cfg, address, *command)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    uris = output_uris(data)
    enqueued = queued_uris(Store(data, NAME), input_uris(tmp_path / "posts"))
    assert len(uris) == len(set(uris)) and set(uris) == enqueued
    assert 3900 < len(uris) < 4000  # the demo data's few invalid and repeated posts left out
    st = queue_status(data)
    assert st.pending_posts == st.processing_posts == st.dead_posts == 0
    print(f"\nkilled mid-enqueue while labelling, rerun: rows {len(uris)}, distinct "
          f"{len(set(uris))}, queued at the kill {queued}")


def test_same_full_command_twice_at_once_writes_each_post_once(ray_session, tmp_path):
    write_posts(tmp_path, 3000, days=3)
    cfg = write_config(tmp_path, {"type": PLUGIN, "params": {"delay_s": 0.02}})
    address = ray_session.get_runtime_context().gcs_address
    procs = [_cli(cfg, address, "-r", "posts", "--add-to-queue", "-i", "g",
                  "--run-integrations", "--write-cache", "all", "--quiet") for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1] for r in results]
    import pyarrow.dataset as pads

    table = pads.dataset(tmp_path / "data" / NAME, partitioning="hive").to_table()
    uris = table.column("uri").to_pylist()
    enqueued = queued_uris(Store(tmp_path / "data", NAME), input_uris(tmp_path / "posts"))
    assert len(uris) == len(set(uris)) and set(uris) == enqueued
    assert 2900 < len(uris) < 3000  # the demo data's few invalid and repeated posts left out
    print(f"\ntwo full commands at once: rows {len(uris)}, distinct {len(set(uris))}")


@pytest.mark.parametrize("role,needle", [("queue", "the QueueActor"),
                                         ("writer", "the WriterActor")])
def test_a_killed_pipeline_actor_is_named(ray_session, tmp_path, role, needle):
    import threading

    from jobs.stages.inference import PipelineActorDied

    cfg = pipeline_config(tmp_path, {"type": PLUGIN, "params": {"delay_s": 0.5}},
                          batch_size=250)
    enqueue(tmp_path, make_posts(3000), batch_size=250, config=cfg)
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            run_inference(cfg, NAME)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while not queue_status(tmp_path).processing_posts:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.1)
    [name] = [a for a in ray_session.util.list_named_actors()
              if a.startswith(f"backfill-{role}-")]
    ray_session.kill(ray_session.get_actor(name))
    thread.join(timeout=180)
    [exc] = outcome
    assert isinstance(exc, PipelineActorDied) and needle in str(exc), repr(exc)
    # nothing lost: every post is labelled, leased (reclaimable) or pending
    st = queue_status(tmp_path)
    assert st.pending_posts + st.processing_posts + st.output_rows_unexported == 3000


def test_a_row_corrupted_on_disk_is_dead_lettered_by_the_read_task(inprocess, tmp_path):
    """The queue actor hands payloads on undecoded; the read task that cannot decode one
    buries it (fenced) and the rest of the run goes on."""
    cfg = pipeline_config(tmp_path, batch_size=250)
    store = Store(tmp_path, NAME)
    store.enqueue(make_posts(1000), batch_size=250, config_hash=version_of(cfg))
    t = store.tables["input"]
    [(bad_id,)] = store.conn.execute(f"SELECT id FROM {t} ORDER BY id LIMIT 1 OFFSET 2")
    store.conn.execute(f"UPDATE {t} SET payload = ? WHERE id = ?", ('[{"uri": "x", "te', bad_id))
    summary = run_inference(cfg, NAME)
    uris = output_uris(tmp_path)
    assert len(uris) == len(set(uris)) == 750 and summary.labelled == 750
    st = queue_status(tmp_path)
    assert st.dead_undecodable_rows == 1 and st.pending_posts == st.processing_posts == 0


def test_rerunning_the_full_command_takes_back_every_claim_of_a_run_that_died(ray_session,
                                                                           tmp_path):
    """A run died holding every batch (nothing pending; its lease far from expiring): the
    same one-command form, rerun once, takes the claims back at once and labels every post
    exactly once. (Before: its first pass found nothing pending, claimed nothing — claiming
    is what reaped — and it exited 0 with every post still leased.)"""
    from jobs.backfill import main
    from jobs.config import load_config
    from queue_store.lease_holder import LeaseHolder

    posts = write_posts(tmp_path, 600, days=2)
    cfg = write_config(tmp_path, {"type": PLUGIN}, posts=posts)
    full = ["-r", "posts", "--add-to-queue", "-i", "g", "--run-integrations", "--write-cache",
            "all", "--quiet"]
    assert main(["--config", str(cfg), "-r", "posts", "--add-to-queue", "-i", "g",
                 "--quiet"]) == 0
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    holder = LeaseHolder(host=LeaseHolder.this_process().host, pid=gone.pid,
                         started=time.time(), run_id="g-crashed")
    gone.wait()
    store = Store(tmp_path / "data", NAME)
    version = load_config(str(cfg)).integrations[NAME].classifier.config_hash
    claimed = store.claim(1000, lease_seconds=3600, owner=holder.encode(), config_hash=version)
    assert claimed and store.status().pending_posts == 0
    leased = store.status().processing_posts
    address = ray_session.get_runtime_context().gcs_address
    run = _cli(cfg, address, *full)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err[-2000:]
    uris = output_uris(tmp_path / "data")
    assert len(uris) == len(set(uris)) == leased
    st = store.status()
    assert st.pending_posts == st.processing_posts == st.dead_posts == 0
    store.close()
