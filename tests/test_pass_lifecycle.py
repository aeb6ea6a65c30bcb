"""One pass, one actor pool: retries run on the classifier actors that failed them (no new
pool, no model reload), and those actors start while the same command's enqueue runs; its
read tasks claim a block's batches in one call; nothing lost or duplicated."""
from __future__ import annotations

import time

import pytest

from tests.pipeline_helpers import run_inference
from tests.conftest import make_posts
from tests.pipeline_helpers import NAME, enqueue, output_uris, pipeline_config, queue_status


def _flaky_queue(tmp_path, n: int, batch_size: int):
    """``n`` posts queued, every 7th failing once; a config whose one actor records each model
    load in ``state``. Returns (posts, state, config)."""
    state = tmp_path / "state"
    state.mkdir()
    posts = make_posts(n)
    for p in posts[::7]:
        p["text"] += " FLAKY"
    flaky = {"type": "tests.plugins:FlakyOnce", "params": {"state_dir": str(state)}}
    config = pipeline_config(tmp_path, flaky, batch_size=batch_size,
                             actors={"min": 1, "max": 1})
    enqueue(tmp_path, posts, batch_size=100, config=config)
    return posts, state, config


def _assert_each_post_once(tmp_path, posts) -> None:
    uris = output_uris(tmp_path)
    assert sorted(uris) == sorted(p["uri"] for p in posts) and len(set(uris)) == len(uris)


@pytest.mark.slow
def test_retries_run_on_the_same_actor_without_reloading(ray_session, tmp_path):
    posts, state, config = _flaky_queue(tmp_path, 600, batch_size=50)
    summary = run_inference(config, NAME, quiet=True)
    assert summary.retried == len(posts[::7])  # every flaky post failed once, then passed
    _assert_each_post_once(tmp_path, posts)
    assert queue_status(tmp_path).pending_posts == 0
    loads = sorted(f.name for f in state.iterdir() if f.name.startswith("init-"))
    assert len(loads) == 1, loads  # one actor, one model load, retries included


@pytest.mark.slow
def test_claims_stream_while_the_enqueue_runs_and_an_overlapping_enqueue_queues_each_once(
        ray_session, tmp_path, monkeypatch):
    """The feed (the same command's enqueue) starts while the classifier actor loads; the
    run claims and labels its first posts while the feed still runs (without streaming it
    would wait for ever: here, fail after 120 s); a second enqueue overlapping the first then
    queues only the new posts, and every post is labelled once."""
    import time

    state = tmp_path / "state"
    state.mkdir()
    posts = make_posts(300)
    config = pipeline_config(tmp_path, {"type": "tests.plugins:FlakyOnce",
                                        "params": {"state_dir": str(state)}},
                             actors={"min": 1, "max": 1})

    def wait_until(ready, what: str) -> None:
        deadline = time.monotonic() + 120
        while not ready():
            assert time.monotonic() < deadline, what
            time.sleep(0.1)

    def feed():
        wait_until(lambda: any(f.name.startswith("init-") for f in state.iterdir()),
                   "no classifier actor started during enqueue")
        enqueue(tmp_path, posts[:150], batch_size=50, config=config)
        wait_until(lambda: queue_status(tmp_path).output_rows_unexported +
                   queue_status(tmp_path).output_rows_exported >= 50,
                   "nothing was labelled while the enqueue ran")
        added = enqueue(tmp_path, posts[100:], batch_size=50, config=config)
        assert added.enqueued_posts == 150 and added.skipped_known == 50  # 100–149 once

    from jobs.stages.inference import InferenceRun

    passes = []
    one_pass = InferenceRun._one_pass
    monkeypatch.setattr(InferenceRun, "_one_pass",
                        lambda self: (passes.append(1), one_pass(self))[1])
    summary = run_inference(config, NAME, quiet=True, feed=feed)
    assert summary.labelled == 300
    _assert_each_post_once(tmp_path, posts)
    # the streamed chunks and the retries ran in one pass, on one actor: one model load
    loads = [f.name for f in state.iterdir() if f.name.startswith("init-")]
    assert len(passes) == 1 and len(loads) == 1, (passes, loads)


@pytest.mark.slow
def test_without_whole_block_mapping_retries_fall_back_to_a_pass(ray_session, tmp_path,
                                                                 monkeypatch):
    """On a Ray without ``map_batches_internal`` Ray Data batches the input and holds a short
    block until the read ends: read tasks must then not wait for in-flight batches (they did,
    and the run hung); retries run in a further pass instead."""
    import jobs.stages.inference

    monkeypatch.setattr(jobs.stages.inference, "whole_block_mapper", lambda ray: None)
    posts, _, config = _flaky_queue(tmp_path, 300, batch_size=512)  # larger than any block
    config.pipeline.no_progress_timeout_s = 60  # a hang fails the test instead of the suite
    summary = run_inference(config, NAME, quiet=True)
    assert summary.retried == len(posts[::7]) and summary.labelled == 300
    _assert_each_post_once(tmp_path, posts)


def _read_task_of_a_run(ray_session, tmp_path, lease_seconds: float):
    """A real QueueActor (as a run starts it, its leases naming this process) and
    ``pull_from_queue`` — a read task's body — run here."""
    from actors.queue_actor import QueueActor
    from actors.stage_reports import OPTIONS
    from queue_store.lease_holder import LeaseHolder

    config = pipeline_config(tmp_path)
    holder = LeaseHolder.this_process("read-task-test").encode()
    queue = ray_session.remote(**OPTIONS)(QueueActor).options(num_cpus=0).remote(
        str(tmp_path), NAME, 3, lease_seconds, holder,
        config.integrations[NAME].classifier.config_hash)
    return config, queue


def _blocks_as_ray_data_cuts_them(tables, block_bytes: int) -> list[int]:
    """Rows per block: Ray Data hands a block on once what was yielded into it exceeds
    ``block_bytes``."""
    blocks, rows, size = [], 0, 0
    for table in tables:
        rows, size = rows + table.num_rows, size + table.nbytes
        if size > block_bytes:
            blocks, rows, size = blocks + [rows], 0, 0
    return blocks + ([rows] if rows else [])


@pytest.mark.slow
def test_a_read_task_claims_a_whole_block_in_one_call(ray_session, tmp_path):
    """Each claim after the first takes what is missing from the block Ray Data is filling
    (one QueueActor call, one transaction), and the blocks are those that claiming one batch
    at a time made; every batch claimed once."""
    import pyarrow.compute as pc

    from actors.queue_datasource import pull_from_queue

    config, queue = _read_task_of_a_run(ray_session, tmp_path, 60)
    posts = make_posts(4000)
    enqueue(tmp_path, posts, batch_size=100, config=config)  # 40 batches
    try:
        one = next(pull_from_queue(queue, 1, 1))  # a claim of one batch: its size
        ray_session.get(queue.release_outstanding.remote())
        block_bytes = int(one.nbytes * 5.5)  # a block: six batches
        claims = list(pull_from_queue(queue, block_bytes, None))
    finally:
        ray_session.get(queue.release_outstanding.remote())
        ray_session.kill(queue)
    batches = [set(t.column("batch_id").to_pylist()) for t in claims]
    assert sum(len(b) for b in batches) == 40 and len(set().union(*batches)) == 40
    assert len(claims) <= 40 // 6 + 2 and max(len(b) for b in batches) >= 5  # was 40 calls
    one_at_a_time = [t.filter(pc.equal(t.column("batch_id"), b))
                     for t in claims for b in sorted(set(t.column("batch_id").to_pylist()))]
    assert (_blocks_as_ray_data_cuts_them(claims, block_bytes)
            == _blocks_as_ray_data_cuts_them(one_at_a_time, block_bytes))


@pytest.mark.slow
def test_a_queue_actor_killed_holding_multi_batch_claims_loses_and_repeats_nothing(
        ray_session, tmp_path):
    """A run's QueueActor is killed while its read task holds two claims of several batches
    each (nothing labelled yet): once those leases run out, the next run labels every post
    exactly once and leaves nothing pending or leased."""
    from actors.queue_datasource import pull_from_queue

    config, queue = _read_task_of_a_run(ray_session, tmp_path, 2)
    posts = make_posts(3000)
    enqueue(tmp_path, posts, batch_size=100, config=config)
    read = pull_from_queue(queue, 100_000, None)
    held = [next(read), next(read)]
    assert len(set(held[1].column("batch_id").to_pylist())) > 1  # a claim of several batches
    ray_session.kill(queue)  # mid-read: the claims are never completed nor handed back
    status = queue_status(tmp_path)
    assert status.processing_posts == sum(t.num_rows for t in held)
    # Their holder (this process) is alive, so nothing reaps them before they run out: wait
    # past their 2 s (a busier machine only waits longer).
    time.sleep(2.5)
    summary = run_inference(config, NAME, quiet=True)
    assert summary.labelled == len(posts)
    _assert_each_post_once(tmp_path, posts)
    status = queue_status(tmp_path)
    assert status.pending_posts == status.processing_posts == 0
