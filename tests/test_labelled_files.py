"""Labels straight to parquet: a run SIGKILLed at each step of the commit protocol — after
staging a claim's file, after the transaction that records it, part-way through publishing
it, part-way through uploading it to an object store — and then the same command's rerun:
every post labelled exactly once in the output, nothing pending or leased, no staged file
left. Readers see each row at most once at every point in between."""
from __future__ import annotations

import signal

import pyarrow.fs as pafs
import pytest

from queue_store.location import Location, ObjectStore
from queue_store.staging import STAGING
from tests.conftest import make_posts
from tests.pipeline_helpers import (NAME, enqueue, output_uris, pipeline_config, queue_status,
                                    run_inference, version_of)
from tests.queue_helpers import spawn_queue_proc

pytestmark = [pytest.mark.slow]
POSTS = 2000  # 8 batches of 250; the killed process claims 2 batches a claim


def _killed(tmp_path, cfg, out_uri: str, step: str, endpoint: str = "") -> None:
    """Queue the posts, then label them in another process killed at ``step`` of its
    second claim."""
    enqueue(tmp_path, make_posts(POSTS), batch_size=250, config=cfg)
    proc = spawn_queue_proc("label_killed_at", str(tmp_path), out_uri, endpoint,
                            version_of(cfg), step)
    assert proc.wait(timeout=120) == -signal.SIGKILL


def _staged(root) -> list:
    return sorted(p for p in (root.parent / STAGING / root.name).rglob("*") if p.is_file())


@pytest.mark.parametrize("step", ["staged", "committed", "mid-publish"])
def test_a_run_killed_at_each_step_of_the_commit_is_finished_by_the_rerun(inprocess, tmp_path,
                                                                          step):
    cfg = pipeline_config(tmp_path)
    root = tmp_path / NAME  # the output (the config's default: data_dir/<integration>)
    _killed(tmp_path, cfg, str(root), step)
    st, visible = queue_status(tmp_path), output_uris(tmp_path)
    assert len(visible) == len(set(visible))  # readers never see a row twice
    if step == "staged":  # the second claim's file written, its batches still leased
        assert len(visible) == 500 and st.processing_posts == 500 and _staged(root)
        assert st.output_rows_unexported == 0
    elif step == "committed":  # recorded: its batches done, its labels not visible yet
        assert len(visible) == 500 and st.processing_posts == 0
        assert st.output_rows_unexported == 500 and _staged(root)
    else:  # one of its three day files published, the others still staged
        assert 500 < len(visible) < 1000 and st.output_rows_unexported == 500
    rerun = run_inference(cfg, NAME)  # the same command: no SQL, nothing by hand
    uris = output_uris(tmp_path)
    assert len(uris) == len(set(uris)) == POSTS
    st = queue_status(tmp_path)
    assert st.pending_posts == st.processing_posts == st.dead_posts == 0
    assert st.output_rows_unexported == 0 and st.output_rows_exported == POSTS
    assert _staged(root) == []  # published, or deleted as garbage
    relabelled = {"staged": POSTS - 500, "committed": POSTS - 1000, "mid-publish": POSTS - 1000}
    assert rerun.labelled == relabelled[step]  # what the dead run completed is not redone


def test_a_run_killed_mid_upload_to_an_object_store_is_finished_by_the_rerun(
        inprocess, s3_endpoint, tmp_path):
    bucket = s3_endpoint.bucket()
    out_uri = f"s3://{bucket}/labels/{NAME}"
    cfg = pipeline_config(tmp_path, top={"output_dir": f"s3://{bucket}/labels",
                                         "object_store": {"endpoint_url": s3_endpoint.url}})
    _killed(tmp_path, cfg, out_uri, "mid-upload", s3_endpoint.url)
    out = Location.of(out_uri, ObjectStore(endpoint_url=s3_endpoint.url))

    def objects(under: str) -> list[str]:
        infos = s3_endpoint.fs().get_file_info(pafs.FileSelector(
            f"{bucket}/labels/{under}", recursive=True, allow_not_found=True))
        return [i.path for i in infos if i.type == pafs.FileType.File]

    staged = f"{STAGING}/{NAME}"
    assert objects(staged) == []  # the half-sent upload never became an object
    assert queue_status(tmp_path).processing_posts == 500  # its batches still leased
    visible = out.dataset().to_table(columns=["uri"]).column("uri").to_pylist()
    assert len(visible) == len(set(visible)) == 500
    rerun = run_inference(cfg, NAME)
    uris = out.dataset().to_table(columns=["uri"]).column("uri").to_pylist()
    assert len(uris) == len(set(uris)) == POSTS and rerun.labelled == POSTS - 500
    st = queue_status(tmp_path)
    assert st.pending_posts == st.processing_posts == st.output_rows_unexported == 0
    assert objects(staged) == [] and len(objects(NAME)) > 0


def _run_actors(tmp_path, posts: list[dict], run_id: str, complete_within_s: float):
    """``posts`` queued (250 a batch) and a run's QueueActor, WriterActor and a
    ``ClassifierStage`` of the test plugin, as the job starts them, without Ray Data."""
    import ray

    from actors.classifier_stage import ClassifierStage
    from actors.queue_actor import QueueActor
    from actors.stage_reports import OPTIONS
    from actors.writer_actor import WriterActor
    from queue_store.lease_holder import LeaseHolder
    from tests.pipeline_helpers import PLUGIN

    cfg = pipeline_config(tmp_path)
    enqueue(tmp_path, posts, batch_size=250, config=cfg)
    version, root = version_of(cfg), tmp_path / NAME
    queue = ray.remote(**OPTIONS)(QueueActor).options(num_cpus=0).remote(
        str(tmp_path), NAME, 3, 60, LeaseHolder.this_process(run_id).encode(), version)
    writer = ray.remote(WriterActor).options(num_cpus=0).remote(
        queue, str(tmp_path), NAME, 3, Location.of(root), 10**6, 3600, queue, run_id,
        complete_within_s, 10**6)
    stage = ClassifierStage(PLUGIN, {}, 100, run_id, NAME, queue, writer, version, {}, None,
                            str(root))
    return version, root, queue, writer, stage


def test_a_claim_that_lost_a_lease_completes_the_rest_and_keeps_no_file_of_it(inprocess,
                                                                              tmp_path):
    """The writer's completion of a two-batch claim is fenced out because another run took
    one batch over (its lease expired meanwhile): nothing of the claim is committed, its
    staged file is deleted, and the batch still held completes alone with a file of its own
    posts — the other run's batch is neither labelled here nor lost."""
    import ray

    from actors.queue_datasource import batches_to_table
    from tests.queue_helpers import Store

    version, root, queue, writer, stage = _run_actors(tmp_path, make_posts(500), "fenced-run",
                                                      60)
    try:
        claim = ray.get(queue.next_batches.remote(2))
        assert len(claim) == 2 and claim[0].lease_id == claim[1].lease_id
        block = batches_to_table(claim, queue)
        store = Store(tmp_path, NAME)  # another run takes the second batch over
        assert store.release(claim[1].batch_id, claim[1].lease_id)
        [taken] = store.claim(1, owner="other-run", config_hash=version)
        assert taken.batch_id == claim[1].batch_id
        stage(block)
        stats = ray.get(writer.finish.remote())
    finally:
        ray.kill(writer)
        ray.kill(queue)
    assert stats.stale_batches == 1 and stats.completed_batches == 1
    uris = output_uris(tmp_path)
    assert sorted(uris) == sorted(p["uri"] for p in make_posts(250))  # the held batch alone
    st = store.status(version)
    assert st.processing_posts == 250 and st.pending_posts == 0  # the other run's, untouched
    assert _staged(root) == []  # the fenced-out file is gone
    assert store.release(taken.batch_id, taken.lease_id)
    store.close()


@pytest.mark.parametrize("lost", [False, True])
def test_whole_claims_complete_together_and_a_lost_lease_fences_out_only_its_own(
        inprocess, tmp_path, monkeypatch, lost):
    """Two claims whole at the writer complete as one group: one staged file (per day) and
    one fenced transaction for both. When another run has taken one claim's batch over, the
    group is fenced out whole, its file deleted, and the other claim completes again alone:
    its posts labelled once, the taken batch neither labelled here nor lost."""
    import ray

    import actors.writer_actor
    from actors.queue_datasource import batches_to_table
    from tests.queue_helpers import Store

    monkeypatch.setattr(actors.writer_actor, "IDLE_S", 3600)  # nothing completes before finish
    posts = make_posts(500, days=1)
    version, root, queue, writer, stage = _run_actors(tmp_path, posts, "group-run", 3600)
    store = Store(tmp_path, NAME)
    try:
        [first] = ray.get(queue.next_batches.remote(1))
        [second] = ray.get(queue.next_batches.remote(1))
        assert first.lease_id != second.lease_id
        blocks = [batches_to_table([first], queue), batches_to_table([second], queue)]
        if lost:  # another run takes the second claim's batch over
            assert store.release(second.batch_id, second.lease_id)
            [taken] = store.claim(1, owner="other-run", config_hash=version)
            assert taken.batch_id == second.batch_id
        for block in blocks:
            stage(block)
        assert ray.get(writer.get_stats.remote()).open_batches == 2  # both whole, waiting
        stats = ray.get(writer.finish.remote())
    finally:
        ray.kill(writer)
        ray.kill(queue)
    uris = output_uris(tmp_path)
    files = sorted(p.name for p in root.rglob("*.parquet"))
    assert len(files) == 1, files  # one file for the group (or for what it kept)
    assert _staged(root) == []
    st = store.status(version)
    if lost:
        assert stats.stale_batches == 1 and stats.completed_batches == 1
        assert sorted(uris) == sorted(p["uri"] for p in posts[:250])
        assert st.processing_posts == 250 and st.pending_posts == 0  # the other run's
        assert store.release(taken.batch_id, taken.lease_id)
    else:
        assert stats.stale_batches == 0 and stats.completed_batches == 2
        assert sorted(uris) == sorted(p["uri"] for p in posts)
        assert st.processing_posts == st.pending_posts == 0
    store.close()
