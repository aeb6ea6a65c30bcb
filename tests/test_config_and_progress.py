"""Config paths resolve against the config's folder; the progress display's two forms."""
from __future__ import annotations

import io
from pathlib import Path

import yaml

from jobs.config import load_config
from jobs.stages.progress import Figures, Progress


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    study = tmp_path / "study"
    (study / "configs" / "labels").mkdir(parents=True)
    (study / "models" / "mine").mkdir(parents=True)
    cfg = study / "configs" / "job.yaml"
    cfg.write_text(yaml.safe_dump({
        "data_dir": "../data", "output_dir": "/abs/out",
        "posts": {"path": "s3://bucket/posts"},
        "integrations": {
            "a": {"code": "a", "classifier": {"type": "embedding_prototypes", "params": {
                "labels_file": "labels/x.yaml", "model": "../models/mine"}}},
            "b": {"code": "b", "classifier": {"type": "hf_sequence_classification",
                                              "params": {"model": "org/some-model"}}}}}))
    monkeypatch.chdir(tmp_path)  # anywhere but the config's folder
    config = load_config(cfg)
    assert Path(config.data_dir) == study / "data"
    assert config.output_dir == "/abs/out" and config.posts.path == "s3://bucket/posts"
    a = config.integrations["a"].classifier.params
    assert Path(a["labels_file"]) == study / "configs" / "labels" / "x.yaml"
    assert Path(a["model"]) == study / "models" / "mine"
    assert config.integrations["b"].classifier.params["model"] == "org/some-model"  # hub id
    assert Path(load_config(cfg, data_dir="elsewhere").data_dir) == tmp_path / "elsewhere"


def test_shipped_demo_config_points_at_the_project_folders():
    root = Path(__file__).resolve().parents[1]
    config = load_config(root / "configs" / "demo.yaml")
    assert Path(config.data_dir) == root / "data"
    assert Path(config.posts.path) == root / "demo_data" / "posts"
    labels = config.integrations["ml_inference_intergroup"].classifier.params["labels_file"]
    assert Path(labels).is_file()


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_progress_lines_when_not_a_terminal():
    out = io.StringIO()
    figures = Figures(done=250, failed=3, dead=1)
    with Progress("inference g", 1000, lambda: figures, stream=out) as shown:
        line = shown.line(figures)
    assert "[inference g] 250/1000 posts" in line and "failed 3, dead-lettered 1" in line
    assert "ETA" in line
    assert out.getvalue().strip().endswith("dead-lettered 1")  # the final figures


def test_bar_on_a_terminal_and_nothing_when_quiet():
    tty = _Tty()
    with Progress("enqueue g", 10, lambda: Figures(done=10)):
        pass
    with Progress("enqueue g", 10, lambda: Figures(done=10), stream=tty):
        pass
    assert "10/10" in tty.getvalue()  # tqdm's bar
    quiet = io.StringIO()
    with Progress("enqueue g", 10, lambda: Figures(done=10), quiet=True, stream=quiet):
        pass
    assert quiet.getvalue() == ""


def test_ray_address_local_means_a_local_ray_of_the_jobs_own(monkeypatch):
    """``RAY_ADDRESS=local`` (Ray's word for "start one here") is no cluster to join: the job
    starts its own Ray with the config's ray: block, as without the variable."""
    from jobs.stages.ray_setup import join_address

    root = Path(__file__).resolve().parents[1]
    config = load_config(root / "configs" / "demo.yaml")
    for value in ("local", "LOCAL", " local "):
        monkeypatch.setenv("RAY_ADDRESS", value)
        assert join_address(config) is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert join_address(config) == "10.0.0.5:6379"
    monkeypatch.delenv("RAY_ADDRESS")
    assert join_address(load_config(root / "configs" / "demo.yaml",
                                    overrides=["ray.address=local"])) is None
