"""The Python API a notebook uses (``jobs.api``): ``run`` runs the stages as the command line
does and returns the same typed summaries (the exit codes other than 0 raise), ``open_labels``
reads exactly one version's published labels with the output's types."""
from __future__ import annotations

from datetime import date

import pyarrow as pa
import pytest

from jobs.api import CommandEnded, ConfigError, open_labels, run
from jobs.stages.summary import RunSummary
from tests.cli_helpers import write_config, write_posts
from tests.pipeline_helpers import NAME, PLUGIN


def test_run_then_open_labels_as_a_notebook_would(ray_session, tmp_path, capsys):
    posts = write_posts(tmp_path, 300, days=2)
    cfg = write_config(tmp_path, {"type": PLUGIN}, posts=posts)
    summaries = run(cfg, integrations=["g"])
    assert all(isinstance(s, RunSummary) for s in summaries)
    assert [s.stage for s in summaries] == ["enqueue", "inference", "write_cache"]
    enqueued, inferred, _ = summaries
    assert inferred.labelled == enqueued.enqueued > 250 and inferred.dead_lettered == 0
    assert "\ninference: ml_inference_intergroup" in capsys.readouterr().out  # as the CLI prints
    labels = open_labels(str(cfg), "g")
    table = labels.to_table()
    uris = table.column("uri").to_pylist()
    assert len(uris) == len(set(uris)) == inferred.labelled
    assert set(table.column("config_hash").to_pylist()) == {inferred.config_hash}
    assert table.schema.field("label").type == pa.string()
    assert set(table.column("label").to_pylist()) <= {"intergroup", "not_intergroup"}
    frame = table.to_pandas()
    assert len(frame) == inferred.labelled and frame["uri"].is_unique
    # the same stages again: nothing new, exit 0 — summaries, no exception
    again = run(cfg, integrations=["ml_inference_intergroup"])
    assert again[0].skipped_known == enqueued.enqueued and again[1].labelled == 0
    with pytest.raises(LookupError, match=f"it holds {inferred.config_hash} "):
        open_labels(cfg, "g", config_hash="0123456789ab")
    with pytest.raises(CommandEnded) as ended:  # exit 4: days without posts
        run(cfg, stages=["enqueue"], start_date=date(2030, 1, 1))
    assert ended.value.exit_code == 4 and [s.stage for s in ended.value.summaries] == ["enqueue"]
    assert "no post matched the days from 2030-01-01 on" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown integration|not in the config"):
        run(cfg, integrations=["nope"])
    with pytest.raises(ValueError, match="stages must be some of"):
        run(cfg, stages=["label"])


def test_open_labels_before_any_output_says_what_to_run(tmp_path):
    cfg = write_config(tmp_path, {"type": PLUGIN})
    with pytest.raises(LookupError, match="no labels of ml_inference_intergroup under .* yet"):
        open_labels(cfg, NAME)


def test_one_config_object_follows_a_model_that_arrives_between_calls(inprocess, tmp_path,
                                                                      tiny_models):
    """A notebook keeps one config object: its config_hash was computed while the model
    folder was missing (the hash a --classifier-later enqueue would queue under); once the
    model is there, the next call labels under the model's own hash, not the stale one."""
    import shutil

    from jobs.config import load_config

    model = tmp_path / "models" / "single"
    path = write_config(tmp_path, {"type": "hf_sequence_classification",
                                   "params": {"model": str(model)}},
                        posts=write_posts(tmp_path, 200, days=1))
    cfg = load_config(path)
    before = cfg.integrations[NAME].classifier.config_hash  # as an earlier call computes it
    shutil.copytree(tiny_models["single"], model)  # the model arrives
    [_, inferred, _] = run(cfg, integrations=["g"])
    real = load_config(path).integrations[NAME].classifier.config_hash
    assert real != before and inferred.config_hash == real
    table = open_labels(cfg, "g").to_table()
    uris = table.column("uri").to_pylist()
    assert len(uris) == len(set(uris)) == inferred.labelled > 150
    assert set(table.column("config_hash").to_pylist()) == {real}
