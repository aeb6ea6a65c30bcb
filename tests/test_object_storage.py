"""Posts, labels and gold files in object storage, against a real S3-compatible server on
127.0.0.1 (moto's server mode, its own process): enqueue from S3, run, export to S3, read the
labels back with pyarrow and DuckDB; an export SIGKILLed mid-upload leaves no object and the
rerun exactly one per export; preflight names an unusable location in one line."""
from __future__ import annotations

import os
import signal
import time

import pyarrow.fs as pafs
import pytest
import yaml

from jobs.backfill import main
from tests.queue_helpers import NAME, Store, complete_as_before, export_output, input_uris, posts_of, queued_uris, spawn_queue_proc
from queue_store.location import Location, ObjectStore
from tests.cli_helpers import write_config, write_posts
from tests.conftest import make_posts
from tests.pipeline_helpers import PLUGIN


def _s3_config(tmp_path, server, posts: str, output: str):
    cfg = write_config(tmp_path, {"type": PLUGIN})
    raw = yaml.safe_load(cfg.read_text())
    raw["posts"]["path"] = posts
    raw["output_dir"] = output
    raw["object_store"] = {"endpoint_url": server.url}
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


def _objects(server, prefix: str) -> list[str]:
    infos = server.fs().get_file_info(pafs.FileSelector(prefix, recursive=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)


@pytest.mark.slow
def test_posts_from_s3_labels_to_s3_each_once_read_back_with_pyarrow_and_duckdb(
        inprocess, s3_endpoint, tmp_path, capsys):
    import duckdb

    bucket = s3_endpoint.bucket()
    local_posts = write_posts(tmp_path, 600, days=2)
    pafs.copy_files(str(local_posts), f"{bucket}/posts",
                    destination_filesystem=s3_endpoint.fs())
    cfg = _s3_config(tmp_path, s3_endpoint, f"s3://{bucket}/posts", f"s3://{bucket}/labels")
    command = ["--config", str(cfg), "-r", "posts", "--add-to-queue", "-i", "g",
               "--run-integrations", "--write-cache", "all", "--quiet"]
    assert main(command) == 0, capsys.readouterr().err
    out = Location.of(f"s3://{bucket}/labels/{NAME}", ObjectStore(endpoint_url=s3_endpoint.url))
    dataset = out.dataset()
    uris = dataset.to_table(columns=["uri"]).column("uri").to_pylist()
    enqueued = queued_uris(Store(tmp_path / "data", NAME), input_uris(local_posts))
    assert len(uris) == len(set(uris)) and set(uris) == enqueued and len(uris) > 550
    [(rows, distinct)] = duckdb.sql("SELECT COUNT(*), COUNT(DISTINCT uri) FROM dataset"
                                    ).fetchall()
    assert rows == distinct == len(uris)
    # A gold file in the bucket, evaluated against the labels there.
    gold = "uri,label\n" + "".join(f"{u},intergroup\n" for u in sorted(uris)[:20])
    with s3_endpoint.fs().open_output_stream(f"{bucket}/gold.csv") as fh:
        fh.write(gold.encode())
    capsys.readouterr()
    assert main(["--config", str(cfg), "-i", "g", "--evaluate", f"s3://{bucket}/gold.csv"]) == 0
    assert "evaluated 20" in capsys.readouterr().out


def test_export_sigkilled_mid_upload_leaves_no_object_and_the_rerun_one_per_export(
        s3_endpoint, tmp_path):
    bucket = s3_endpoint.bucket()
    store = Store(tmp_path, NAME)
    store.enqueue(make_posts(3000), batch_size=500)
    while batches := store.claim(max_batches=6):  # output rows, as older queue files hold
        for b in batches:
            complete_as_before(store, b, {p["uri"]: {"label": "intergroup"}
                                          for p in posts_of(b)})
    out_uri = f"s3://{bucket}/labels"
    ready = tmp_path / "ready"
    proc = spawn_queue_proc("export_killed_mid_upload", str(tmp_path), out_uri,
                            s3_endpoint.url, "5", str(ready))
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the export never started"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    half = ready.read_text()
    before = _objects(s3_endpoint, f"{bucket}/labels")
    assert len(before) == 4 and half not in before  # the half-uploaded object never appeared
    out = Location.of(out_uri, ObjectStore(endpoint_url=s3_endpoint.url))
    stats = export_output(store, out, 1000)  # the rerun
    after = _objects(s3_endpoint, f"{bucket}/labels")
    stems = [p.rsplit("/", 1)[1] for p in after]
    assert half in after and set(before) <= set(after)
    assert len(after) == len(set(after)) == 9  # 3 exports x 3 days, once each
    assert len(set(stems)) == 3 and stats.exports >= 1
    uris = out.dataset().to_table(columns=["uri"]).column("uri").to_pylist()
    assert len(uris) == len(set(uris)) == 3000
    store.close()


def test_preflight_names_an_unwritable_bucket_and_missing_posts_in_one_line_each(
        s3_endpoint, tmp_path, capsys):
    cfg = _s3_config(tmp_path, s3_endpoint, "s3://no-such-posts-bucket/posts",
                     "s3://no-such-labels-bucket/labels")
    code = main(["--config", str(cfg), "-r", "posts", "--add-to-queue", "-i", "g",
                 "--run-integrations"])
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert code == 2 and len(err) == 2, err
    assert any(f"output s3://no-such-labels-bucket/labels/{NAME} cannot be written" in x
               for x in err), err
    assert any("posts path 's3://no-such-posts-bucket/posts' cannot be read" in x
               for x in err), err
    assert not (tmp_path / "data" / "queue").exists()  # nothing was created


def test_a_data_dir_on_a_network_file_system_is_refused(tmp_path):
    from jobs.stages.preflight import NETWORK_FS, mount_type

    mounts = tmp_path / "mounts"
    mounts.write_text(f"server:/export {tmp_path / 'nfs'} nfs4 rw 0 0\n/dev/vda / ext4 rw 0 0\n")
    assert mount_type(tmp_path / "nfs" / "data", str(mounts)) == "nfs4" in NETWORK_FS
    assert mount_type(tmp_path / "elsewhere", str(mounts)) == "ext4"
