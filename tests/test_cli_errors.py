"""Every user error: one line naming the problem and the fix, exit 2, no traceback."""
from __future__ import annotations

import pytest
import yaml

from jobs.backfill import main
from tests.cli_helpers import write_config, write_posts

PLUGIN = {"type": "tests.plugins:KeywordClassifier"}


def _errs(capsys, argv) -> list[str]:
    """Exit 2 with one ``error:`` line per problem and nothing else on stderr."""
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = [x for x in captured.err.splitlines() if x.strip()]
    assert lines and all(x.startswith("error: ") for x in lines), captured.err
    assert "Traceback" not in captured.err
    return lines


def _err(capsys, argv) -> str:
    [line] = _errs(capsys, argv)
    return line


def test_unknown_integration(tmp_path, capsys):
    cfg = write_config(tmp_path, PLUGIN)
    line = _err(capsys, ["--config", str(cfg), "-i", "zz", "--run-integrations"])
    assert "unknown integration 'zz'" in line and "g (ml_inference_intergroup)" in line


def test_unknown_config_key_is_named(tmp_path, capsys):
    cfg = write_config(tmp_path, PLUGIN)
    raw = yaml.safe_load(cfg.read_text())
    raw["integrations"]["ml_inference_intergroup"]["batchsize"] = 5
    cfg.write_text(yaml.safe_dump(raw))
    line = _err(capsys, ["--config", str(cfg), "--queue-status"])
    assert "integrations.ml_inference_intergroup.batchsize: unknown key" in line


@pytest.mark.parametrize("args,needle", [
    (["--start-date", "2024-13-01"], "not a date like 2024-10-01"),
    (["--start-date", "2024-10-07", "--end-date", "2024-10-01"], "is after end date 2024-10-01"),
    (["--max-records-per-run", "0"], "not a positive whole number"),
])
def test_bad_dates_and_numbers(tmp_path, capsys, args, needle):
    cfg = write_config(tmp_path, PLUGIN)
    line = _err(capsys, ["--config", str(cfg), "-r", "posts", "--add-to-queue", "-i", "g", *args])
    assert needle in line


def test_start_after_the_configs_end_date(tmp_path, capsys):
    cfg = write_config(tmp_path, PLUGIN)
    raw = yaml.safe_load(cfg.read_text())
    raw["posts"]["end_date"] = "2024-10-03"
    cfg.write_text(yaml.safe_dump(raw))
    line = _err(capsys, ["--config", str(cfg), "-r", "posts", "--add-to-queue", "-i", "g",
                         "--start-date", "2024-10-05"])
    assert "start date 2024-10-05 is after end date 2024-10-03" in line


def test_missing_posts_path(tmp_path, capsys):
    cfg = write_config(tmp_path, PLUGIN, posts=tmp_path / "nope")
    line = _err(capsys, ["--config", str(cfg), "-r", "posts", "--add-to-queue", "-i", "g"])
    assert "posts path" in line and "partition_date=YYYY-MM-DD" in line


def test_missing_model_path_fails_before_any_stage(tmp_path, capsys):
    write_posts(tmp_path, 50)
    cfg = write_config(tmp_path, {"type": "hf_sequence_classification",
                                  "params": {"model": str(tmp_path / "models" / "ime")}})
    line = _err(capsys, ["--config", str(cfg), "-r", "posts", "--add-to-queue", "-i", "g",
                         "--run-integrations"])
    assert "local model folder" in line and "not found" in line
    assert not (tmp_path / "data" / "queue").exists()  # nothing was enqueued


def test_missing_config_and_flag_misuse(tmp_path, capsys):
    assert "not found" in _err(capsys, ["--config", str(tmp_path / "x.yaml"), "--queue-status"])
    cfg = write_config(tmp_path, PLUGIN)
    assert "nothing to do" in _err(capsys, ["--config", str(cfg)])
    assert "--write-cache" in _err(capsys, ["--config", str(cfg), "--clear-queue"])
    assert "-r posts" in _err(capsys, ["--config", str(cfg), "--add-to-queue", "-i", "g"])
    assert "unknown classifier type" in _err(
        capsys, ["--config", str(write_config(tmp_path, {"type": "nope"})), "-i", "g",
                 "--run-integrations"])


def test_gpu_asked_on_cpu_cluster(ray_session, tmp_path, capsys):
    if ray_session.cluster_resources().get("GPU"):
        pytest.skip("this cluster has a GPU")
    cfg = write_config(tmp_path, PLUGIN, num_gpus=1)
    line = _err(capsys, ["--config", str(cfg), "-i", "g", "--run-integrations", "--quiet"])
    assert "num_gpus=1" in line and "set num_gpus: 0" in line


def test_actors_holding_every_cpu_are_refused_before_the_run_waits_for_ever(
        ray_session, tmp_path, capsys):
    """Two actors at 1 CPU on a 2-CPU Ray leave none for a read task: the run would read
    nothing until its no-progress timeout (600 s by default)."""
    cpus = ray_session.cluster_resources()["CPU"]
    cfg = write_config(tmp_path, PLUGIN, num_cpus=cpus / 2, actors={"min": 2, "max": 2})
    line = _err(capsys, ["--config", str(cfg), "-i", "g", "--run-integrations", "--quiet"])
    assert f"need {cpus + 0.25:g} CPUs, but the Ray cluster has {cpus:g}" in line, line
    assert "lower num_cpus" in line


def _posts_with_bad_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    posts = write_posts(tmp_path, 200, days=2)
    day = posts / "partition_date=2024-10-01"
    (day / "README.txt").write_text("not data")  # ignored: not .parquet
    (day / "_SUCCESS").write_text("")            # ignored: underscore file
    (day / "corrupt.parquet").write_bytes(b"PAR1 this is not parquet at all")
    (day / "empty.parquet").write_bytes(b"")
    pq.write_table(pa.table({"uri": ["no-text-1", "no-text-2"],
                             "preprocessing_timestamp": ["2024-10-01"] * 2}),
                   day / "no-text.parquet")
    return posts


def test_unreadable_posts_files_stop_enqueue_before_anything_is_written(tmp_path, capsys):
    _posts_with_bad_files(tmp_path)
    cfg = write_config(tmp_path, PLUGIN)
    line = _err(capsys, ["--config", str(cfg), "-r", "posts", "--add-to-queue", "-i", "g"])
    assert "2 posts file(s)" in line and "corrupt.parquet" in line and "empty.parquet" in line
    assert "--skip-bad-files" in line and "README" not in line
    assert not (tmp_path / "data" / "queue").exists()  # nothing was enqueued


def test_skip_bad_files_enqueues_the_rest_and_counts_them(tmp_path, capsys):
    import json

    _posts_with_bad_files(tmp_path)
    cfg = write_config(tmp_path, PLUGIN)
    assert main(["--config", str(cfg), "-r", "posts", "--add-to-queue", "-i", "g",
                 "--skip-bad-files", "--quiet"]) == 0
    [summary] = [json.loads(p.read_text()) for p in (tmp_path / "data" / "runs").glob("*.json")]
    assert summary["skipped_bad_files"] == 2
    assert summary["invalid_by_reason"]["missing column text"] == 2
    assert summary["rows_read"] == 202
    assert summary["enqueued"] > 150
    assert summary["rows_read"] == sum(summary[k] for k in (
        "enqueued", "skipped_known", "skipped_duplicate", "rejected_invalid"))


def _nothing_created(root):
    assert not root.exists() or not any(root.iterdir()), list(root.rglob("*"))


def test_shipped_ime_config_fails_in_preflight_with_nothing_created(tmp_path, capsys):
    from tests.cli_helpers import ROOT

    data = tmp_path / "data"
    lines = _errs(capsys, ["--config", str(ROOT / "configs" / "ime.yaml"), "--data-dir",
                           str(data), "-r", "posts", "--add-to-queue", "-i", "i",
                           "--run-integrations"])
    [model] = [x for x in lines if "model" in x]
    assert f"local model folder '{ROOT / 'configs' / 'models' / 'ime'}' not found" in model
    assert "download" not in model  # a folder of yours is not fetched from the hub
    assert not data.exists()


def test_typo_in_hub_id_fails_in_preflight(tmp_path, capsys):
    write_posts(tmp_path, 20)
    cfg = write_config(tmp_path, {"type": "hf_sequence_classification",
                                  "params": {"model": "distilbert/distilbert-base-uncasd"}})
    line = _err(capsys, ["--config", str(cfg), "-r", "posts", "--add-to-queue", "-i", "g",
                         "--run-integrations"])
    assert "distilbert-base-uncasd" in line and "Hugging Face cache" in line
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("params,needle", [
    ({"precision": "fp8"}, "params.precision: Input should be 'auto', 'fp32', 'bf16' or 'fp16'"),
    ({"quantize": "int4"}, "params.quantize: Input should be 'int8'"),
    ({"max_length": 0}, "params.max_length: Input should be greater than or equal to 1"),
    ({"temprature": 0.1}, "params.temprature: unknown param (allowed: "),
])
def test_bad_runtime_params_fail_in_preflight(tmp_path, capsys, params, needle):
    from tests.cli_helpers import ROOT

    labels = str(ROOT / "configs" / "labels" / "intergroup.yaml")
    cfg = write_config(tmp_path, {"type": "embedding_prototypes",
                                  "params": {"labels_file": labels, **params}})
    assert needle in _err(capsys, ["--config", str(cfg), "-i", "g", "--run-integrations"])
    assert not (tmp_path / "data").exists()


def test_output_dir_that_cannot_be_a_folder(tmp_path, capsys):
    write_posts(tmp_path, 20)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder should go")
    cfg = write_config(tmp_path, PLUGIN)
    raw = yaml.safe_load(cfg.read_text())
    raw["output_dir"] = str(blocker / "out")
    cfg.write_text(yaml.safe_dump(raw))
    line = _err(capsys, ["--config", str(cfg), "-r", "posts", "--add-to-queue", "-i", "g",
                         "--run-integrations"])
    assert "output folder" in line and "is a file, not a folder" in line
    assert not (tmp_path / "data").exists()


def test_gpu_asked_on_cpu_machine_fails_before_enqueue(ray_session, tmp_path, capsys):
    if ray_session.cluster_resources().get("GPU"):
        pytest.skip("this cluster has a GPU")
    write_posts(tmp_path, 20)
    cfg = write_config(tmp_path, PLUGIN, num_gpus=1)
    line = _err(capsys, ["--config", str(cfg), "-r", "posts", "--add-to-queue", "-i", "g",
                         "--run-integrations", "--quiet"])
    assert "num_gpus=1" in line
    assert not (tmp_path / "data").exists()


def test_admin_verbs_on_a_data_dir_without_a_queue_create_nothing(tmp_path, capsys):
    cfg = write_config(tmp_path, PLUGIN)
    assert main(["--config", str(cfg), "--queue-status", "--show-dead", "3",
                 "--reap-stale"]) == 0
    out = capsys.readouterr().out
    assert "no queue at" in out and "nothing enqueued" in out
    assert not (tmp_path / "data").exists()
