"""Every file in configs/ as shipped, through the CLI's own path: only the model, the endpoint
or the data locations are swapped (a hosted endpoint for a local server, a checkpoint folder
for a tiny one), never the config's shape. The LLM config (a hub id and a GPU) runs against a
real cluster in test_cluster.py."""
from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from jobs.backfill import main
from jobs.config import load_config
from jobs.tools.demo_data import write_demo
from tests.fake_hosted import KEY, FakeHosted

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
COVERED = {  # each shipped config and the test that runs it
    "demo.yaml": "test_hosted_labels_of_another_type_stop_the_run_before_any_retry "
                 "(and test_cluster.py)",
    "intergroup.yaml": "test_intergroup_cluster_config_reports_every_problem_at_once",
    "intergroup_llm.yaml": "test_cluster.py::test_shipped_llm_config_runs_with_the_model_"
                           "cached_under_its_real_hub_id",
    "intergroup_api.yaml": "test_hosted_configs_run_against_a_local_server",
    "sociopolitical.yaml": "test_hosted_configs_run_against_a_local_server",
    "perspective.yaml": "test_hosted_configs_run_against_a_local_server",
    "valence.yaml": "test_valence_config_runs_as_shipped",
    "ime.yaml": "test_ime_config_runs_with_a_checkpoint_folder_swapped_in",
}


def test_every_shipped_config_has_a_test():
    assert {p.name for p in CONFIGS.glob("*.yaml")} == set(COVERED)


def test_shipped_configs_never_share_an_output_unless_they_are_the_same_labels():
    places: dict[tuple[str, str], list[str]] = {}
    for path in sorted(CONFIGS.glob("*.yaml")):
        config = load_config(path)
        for name in config.integrations:
            places.setdefault((str(config.output_location(name)), name), []).append(path.name)
    shared = {k: v for k, v in places.items() if len(v) > 1}
    assert shared == {}, shared


def _posts(tmp_path: Path, n: int = 120) -> Path:
    write_demo(tmp_path / "posts", n, 2, date(2024, 10, 1))
    return tmp_path / "posts"


def _run(capsys, config: Path, tmp_path: Path, *extra: str, code: int = 0) -> tuple[str, str]:
    got = main(["--config", str(config), "--data-dir", str(tmp_path / "data"), "--set",
                f"posts.path={tmp_path / 'posts'}", "--set", f"output_dir={tmp_path / 'out'}",
                "-r", "posts", "--add-to-queue", "-i", "all", "--run-integrations",
                "--write-cache", "all", "--quiet", *extra])
    out = capsys.readouterr()
    assert got == code, out.err
    assert "Traceback" not in out.err
    return out.out, out.err


def _output(tmp_path: Path, name: str) -> pa.Table:
    return pads.dataset(tmp_path / "out" / name, partitioning="hive").to_table()


def test_intergroup_cluster_config_reports_every_problem_at_once(ray_session, tmp_path,
                                                                  capsys):
    """As shipped on this machine: no GPU, and no posts at /mnt/backfill — both reported by
    one run, before anything is written."""
    if ray_session.cluster_resources().get("GPU"):
        pytest.skip("this cluster has a GPU")
    got = main(["--config", str(CONFIGS / "intergroup.yaml"), "--data-dir",
                str(tmp_path / "data"), "-r", "posts", "--add-to-queue", "-i", "g",
                "--run-integrations"])
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert got == 2 and all(x.startswith("error: ") for x in lines), err
    assert any("num_gpus=1" in x for x in lines) and any("posts path" in x for x in lines)
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_valence_config_runs_as_shipped(inprocess, tmp_path, capsys):
    _posts(tmp_path)
    _run(capsys, CONFIGS / "valence.yaml", tmp_path)
    table = _output(tmp_path, "ml_inference_valence")
    assert table.num_rows > 100
    assert set(table.column("valence_label").to_pylist()) <= {"positive", "neutral",
                                                                "negative"}
    assert table.schema.field("compound").type == pa.float64()


@pytest.mark.slow
def test_ime_config_runs_with_a_checkpoint_folder_swapped_in(inprocess, tmp_path, capsys,
                                                             tiny_models):
    _posts(tmp_path, n=40)  # one block: the pool (1 CPU per actor) has no reason to grow
    _run(capsys, CONFIGS / "ime.yaml", tmp_path, "--set",
         f"integrations.ml_inference_ime.classifier.params.model={tiny_models['multi']}")
    table = _output(tmp_path, "ml_inference_ime")
    assert table.num_rows > 35
    for name in ("emotion", "intergroup", "moral", "other"):
        assert table.schema.field(f"label_{name}").type == pa.int64()
    none_fired = [r for r in table.to_pylist()
                  if not any(r[f"label_{n}"] for n in ("emotion", "intergroup", "moral"))]
    assert all(r["label_other"] == 1 for r in none_fired)  # the IME "other" rule


@pytest.mark.slow
def test_hosted_configs_run_against_a_local_server(inprocess, tmp_path, capsys,
                                                  monkeypatch):
    """The three hosted configs, their endpoint swapped for a local server (the README's
    ``--set …base_url=`` recipe) and their key in the variable they name."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("PERSPECTIVE_API_KEY", KEY)
    with FakeHosted() as server:
        for config, name, url in (
                ("intergroup_api.yaml", "ml_inference_intergroup_llm", server.base_url),
                ("sociopolitical.yaml", "ml_inference_sociopolitical", server.base_url),
                ("perspective.yaml", "ml_inference_perspective_api", server.perspective_url)):
            where = tmp_path / config
            _posts(where, n=8 if "perspective" in config else 120)  # 1 request/s as shipped
            _run(capsys, CONFIGS / config, where, "--set",
                 f"integrations.{name}.classifier.params.base_url={url}")
            table = _output(where, name)
            assert table.num_rows == len(set(table.column("uri").to_pylist())) > 5, config
            if config == "intergroup_api.yaml":
                assert table.schema.field("label").type == pa.int64()
            if config == "sociopolitical.yaml":
                assert set(table.column("political_ideology_label").to_pylist()) <= {
                    "left", "moderate", "right", "unclear"}
            if config == "perspective.yaml":
                assert len([c for c in table.column_names if c.startswith("prob_")]) == 22


@pytest.mark.slow
def test_hosted_labels_of_another_type_stop_the_run_before_any_retry(inprocess, tmp_path,
                                                                    capsys, monkeypatch):
    """The demo labels ``ml_inference_intergroup`` with text; a researcher then points the
    hosted intergroup config (integer labels) at the same integration and relabels: the first
    batch stops the run with exit 2 — no request retried, nothing dead-lettered."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    _posts(tmp_path, n=150)
    _run(capsys, CONFIGS / "demo.yaml", tmp_path)
    demo = _output(tmp_path, "ml_inference_intergroup")
    assert demo.schema.field("label").type == pa.string()
    import shutil

    shutil.copytree(CONFIGS / "prompts", tmp_path / "prompts")  # the config's relative file
    clash = tmp_path / "intergroup_api_reused.yaml"  # the same integration name as the demo
    clash.write_text((CONFIGS / "intergroup_api.yaml").read_text().replace(
        "ml_inference_intergroup_llm:", "ml_inference_intergroup:"))
    with FakeHosted() as server:
        url = f"integrations.ml_inference_intergroup.classifier.params.base_url={server.base_url}"
        _, err = _run(capsys, clash, tmp_path, "--set", url, "--relabel-other-versions",
                      code=2)
        requests = len(server.times)
    [line] = [x for x in err.splitlines() if x.startswith("error:")]
    assert "ml_inference_intergroup" in line and "'label'" in line
    assert "int64" in line and "string" in line and "another name" in line
    assert 0 < requests <= demo.num_rows  # no post was asked twice
    demo_hash = demo.column("config_hash")[0].as_py()
    runs = [json.loads(p.read_text()) for p in (tmp_path / "data" / "runs").glob("*.json")]
    [summary] = [r for r in runs if r["stage"] == "inference" and r["claimed"]
                 and r["config_hash"] != demo_hash]
    assert summary["retried"] == summary["dead_lettered"] == 0
    assert summary["usage"].get("requests_retried", 0) == 0
    assert _output(tmp_path, "ml_inference_intergroup").num_rows == demo.num_rows


def test_a_model_that_comes_later_labels_what_was_queued_before_it_once(
        inprocess, tmp_path, capsys, tiny_models):
    """ime.yaml, its model folder swapped for one that is not there yet: --classifier-later
    queues the posts under the config_hash computed without the weights. Once the model is
    in place, the next command queues those posts for the hash it computes (each once — the
    same posts enqueued again are known) and labels every post exactly once."""
    import shutil

    from tests.queue_helpers import Store

    posts = _posts(tmp_path, n=60)
    model = tmp_path / "models" / "ime"
    common = ["--config", str(CONFIGS / "ime.yaml"), "--data-dir", str(tmp_path / "data"),
              "--set", f"posts.path={posts}", "--set", f"output_dir={tmp_path / 'out'}",
              "--set", f"integrations.ml_inference_ime.classifier.params.model={model}",
              "-r", "posts", "--add-to-queue", "-i", "all", "--quiet"]
    assert main([*common, "--classifier-later"]) == 0, capsys.readouterr().err
    [summary] = (tmp_path / "data" / "runs").glob("*.json")  # the enqueue's
    queued = json.loads(summary.read_text())
    capsys.readouterr()
    early = queued["config_hash"]
    store = Store(tmp_path / "data", "ml_inference_ime")
    assert list(store.pending_versions()) == [early]
    shutil.copytree(tiny_models["multi"], model)  # the model arrives
    out, err = _run(capsys, CONFIGS / "ime.yaml", tmp_path, "--set",
                    f"integrations.ml_inference_ime.classifier.params.model={model}")
    now = load_config(CONFIGS / "ime.yaml", str(tmp_path / "data"), [
        f"integrations.ml_inference_ime.classifier.params.model={model}"]
        ).integrations["ml_inference_ime"].classifier.config_hash
    assert now != early
    # The run (starting beside the enqueue) or the enqueue, whichever came first, adopted
    # them; the enqueue then knew every post.
    [adopted] = re.findall(r"^adopted_deferred +(\d+)$", out, re.M)
    assert int(adopted) == queued["enqueued"], out
    enqueue = out.split("\ninference: ")[0]
    assert re.search(rf"^skipped_known +{queued['enqueued']}$", enqueue, re.M), out
    table = _output(tmp_path, "ml_inference_ime")
    uris = table.column("uri").to_pylist()
    assert len(uris) == len(set(uris)) == queued["enqueued"]
    assert set(table.column("config_hash").to_pylist()) == {now}
    st = store.status()
    assert st.pending_posts == st.processing_posts == st.dead_posts == 0
    store.close()


def test_an_enqueue_for_a_classifier_that_cannot_be_built_is_refused(tmp_path, capsys,
                                                                    monkeypatch):
    """ime.yaml as shipped (no model folder) and perspective.yaml without its key: enqueue-only
    is refused with the lines a run would print, nothing queued. With --classifier-later the
    key may come later: the posts are queued under the config_hash the run computes once the
    key is set."""
    monkeypatch.delenv("PERSPECTIVE_API_KEY", raising=False)
    _posts(tmp_path, n=60)
    for config, needle in (("ime.yaml", "model"), ("perspective.yaml", "PERSPECTIVE_API_KEY")):
        got = main(["--config", str(CONFIGS / config), "--data-dir", str(tmp_path / "data"),
                    "--set", f"posts.path={tmp_path / 'posts'}", "-r", "posts",
                    "--add-to-queue", "-i", "all", "--quiet"])
        err = capsys.readouterr().err
        [line] = [x for x in err.splitlines() if x.strip()]
        assert got == 2 and line.startswith("error: ") and needle in line, err
        assert not (tmp_path / "data" / "queue").exists()
    later = ["--config", str(CONFIGS / "perspective.yaml"), "--data-dir", str(tmp_path / "data"),
             "--set", f"posts.path={tmp_path / 'posts'}", "-r", "posts", "--add-to-queue", "-i",
             "all", "--quiet", "--classifier-later"]
    assert main(later) == 0, capsys.readouterr().err
    monkeypatch.setenv("PERSPECTIVE_API_KEY", KEY)  # the key arrives; a run's config_hash:
    config = load_config(CONFIGS / "perspective.yaml", str(tmp_path / "data"))
    [(name, integ)] = config.integrations.items()
    from tests.queue_helpers import Store

    store = Store(tmp_path / "data", name)
    assert list(store.pending_versions()) == [integ.classifier.config_hash]
    store.close()
