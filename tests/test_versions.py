"""config_hash names what produced a label; relabelling after a change is explicit."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.dataset as pads
import pytest
import yaml

from classifiers.config_hash import config_hash
from jobs.backfill import main
from tests.queue_helpers import Store, complete, posts_of
from tests.cli_helpers import ROOT, write_config, write_posts
from tests.conftest import make_posts

NAME = "ml_inference_intergroup"


def test_config_hash_follows_what_changes_labels(tmp_path, tiny_models):
    labels = tmp_path / "labels.yaml"
    shutil.copy(ROOT / "configs" / "labels" / "intergroup.yaml", labels)
    base = {"labels_file": str(labels), "model": tiny_models["encoder"], "temperature": 0.05}
    h = config_hash("embedding_prototypes", base)
    assert len(h) == 12 and h == config_hash("embedding_prototypes", dict(base))
    # speed and placement do not change labels
    assert h == config_hash("embedding_prototypes", {**base, "mini_batch_size": 8,
                                                     "device": "cpu", "torch_threads": 1})
    moved = tmp_path / "moved.yaml"
    shutil.copy(labels, moved)
    assert h == config_hash("embedding_prototypes", {**base, "labels_file": str(moved)})
    # what the labels depend on does
    assert h != config_hash("embedding_prototypes", {**base, "temperature": 0.1})
    assert h != config_hash("embedding_prototypes", {**base, "precision": "bf16"})
    assert h != config_hash("hf_sequence_classification", base)
    labels.write_text(labels.read_text() + "\n# edited\n")
    assert h != config_hash("embedding_prototypes", base)
    other = tmp_path / "weights"
    shutil.copytree(tiny_models["encoder"], other)
    st = next(other.glob("*.safetensors"))
    data = bytearray(st.read_bytes())
    data[-1] ^= 0xFF  # one byte of the weights
    st.write_bytes(bytes(data))
    labels.write_text(labels.read_text().replace("\n# edited\n", ""))
    assert config_hash("embedding_prototypes", {**base, "model": str(other)}) != h


def test_store_relabels_other_versions_only_when_asked(tmp_path):
    store = Store(tmp_path, NAME)
    assert store.enqueue(make_posts(10), config_hash="A").enqueued_posts == 10
    [b] = store.claim(1, config_hash="A")
    complete(store, b, {p["uri"]: {"label": 1} for p in posts_of(b)}, {})
    res = store.enqueue(make_posts(12), config_hash="B")
    assert (res.enqueued_posts, res.skipped_other_version) == (2, 10)
    res = store.enqueue(make_posts(12), config_hash="B", relabel=True)
    assert (res.enqueued_posts, res.relabelled, res.skipped_known) == (10, 10, 2)
    res = store.enqueue(make_posts(12), config_hash="B", relabel=True)  # once per version
    assert (res.enqueued_posts, res.skipped_known) == (0, 12)


@pytest.mark.slow
def test_changed_config_is_skipped_then_relabelled_beside_the_old_rows(inprocess, tmp_path,
                                                                      capsys):
    write_posts(tmp_path, 300, days=2)
    cfg = write_config(tmp_path, {"type": "tests.plugins:KeywordClassifier"})
    argv = ["--config", str(cfg), "-r", "posts", "--add-to-queue", "-i", "g",
            "--run-integrations", "--write-cache", "all", "--quiet"]
    assert main(argv) == 0
    first = pads.dataset(tmp_path / "data" / NAME, partitioning="hive").to_table()
    [old_hash] = set(first.column("config_hash").to_pylist())
    capsys.readouterr()
    raw = yaml.safe_load(cfg.read_text())  # the researcher changes a param
    raw["integrations"][NAME]["classifier"]["params"] = {"poison_marker": "NEVER-SEEN"}
    cfg.write_text(yaml.safe_dump(raw))
    assert main(argv) == 0
    err = capsys.readouterr().err
    runs = [json.loads(p.read_text()) for p in (tmp_path / "data" / "runs").glob("*.json")]
    skipped = max(r["skipped_other_version"] for r in runs)
    assert skipped >= first.num_rows  # (repeats of those uris in the input count too)
    assert f"{skipped} post(s) were queued or labelled under another version" in err
    assert "--relabel-other-versions" in err
    assert pads.dataset(tmp_path / "data" / NAME, partitioning="hive").count_rows() == \
        first.num_rows  # nothing changed without the flag
    assert main(argv + ["--relabel-other-versions"]) == 0
    table = pads.dataset(tmp_path / "data" / NAME, partitioning="hive").to_table()
    by_version: dict[str, list[str]] = {}
    for uri, h in zip(table.column("uri").to_pylist(), table.column("config_hash").to_pylist()):
        by_version.setdefault(h, []).append(uri)
    assert set(by_version) == {old_hash, next(h for h in by_version if h != old_hash)}
    for uris in by_version.values():  # exactly once per (uri, config_hash)
        assert len(uris) == len(set(uris)) == first.num_rows
    resolved = [r for r in runs if r["stage"] == "inference"][0]["resolved_config"]
    assert resolved["data_dir"] == str(tmp_path / "data")


def test_a_plugins_source_or_declared_version_is_part_of_config_hash(tmp_path, monkeypatch):
    """Editing a plugin's code relabels (its module file is hashed), unless the plugin
    declares a ``version``, which then decides."""
    import importlib
    import sys

    module = tmp_path / "my_labels.py"
    body = ("class Clf:\n{extra}    def classify(self, texts):\n"
            "        return [{{'label': {value!r}}} for _ in texts]\n")
    module.write_text(body.format(extra="", value="a"))
    monkeypatch.syspath_prepend(str(tmp_path))

    def fresh_hash() -> str:
        sys.modules.pop("my_labels", None)
        importlib.invalidate_caches()
        return config_hash("my_labels:Clf", {})

    first = fresh_hash()
    module.write_text(body.format(extra="", value="b"))  # the plugin's labels changed
    edited = fresh_hash()
    assert edited != first
    module.write_text(body.format(extra="    version = '2'\n", value="b"))
    declared = fresh_hash()
    module.write_text(body.format(extra="    version = '2'\n", value="c") + "# tidied\n")
    assert fresh_hash() == declared != edited  # the declared version decides


def test_what_is_not_there_yet_is_named_and_its_hashes_are_known_once_it_is(tmp_path,
                                                                            tiny_models):
    """A missing model folder, or a hub id not in the cache, is not there yet; the hash
    computed then is among the deferred hashes of the same config once the model is there —
    and not of another model's config."""
    from huggingface_hub.constants import HF_HUB_CACHE

    from classifiers.config_hash import deferred_hashes, not_there_yet
    from tests.hf_cache import put_in_cache

    kind = "hf_sequence_classification"
    folder = {"model": str(tmp_path / "later" / "model")}
    hub = {"model": "backfill-tests/arrives-later"}
    early = {k: config_hash(kind, p) for k, p in (("folder", folder), ("hub", hub))}
    assert not_there_yet(kind, folder) == not_there_yet(kind, hub) == ["model"]
    assert deferred_hashes(kind, folder) == []  # nothing there that could be missing
    shutil.copytree(tiny_models["single"], folder["model"])
    put_in_cache(tiny_models["single"], hub["model"], Path(HF_HUB_CACHE))
    for key, params in (("folder", folder), ("hub", hub)):
        assert not_there_yet(kind, params) == []
        assert config_hash(kind, params) != early[key]
        assert early[key] in deferred_hashes(kind, params)
    other = {"model": tiny_models["multi"]}
    assert not set(early.values()) & set(deferred_hashes(kind, other))
