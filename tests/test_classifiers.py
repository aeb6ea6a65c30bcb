"""Classifiers on tiny local checkpoints (no network), poison isolation and the registry."""
from __future__ import annotations

import math
import time

import pytest

from classifiers.poison import classify_isolating
from classifiers.registry import ClassifierConfigError, build_classifier

TEXTS = ["short one", "a somewhat longer post about the two groups in town",
         "x " * 300, "medium length text here", "tiny", "another post of middling size ok"]


@pytest.fixture(scope="module")
def single(tiny_models):
    return build_classifier("hf_sequence_classification",
                            {"model": tiny_models["single"], "mini_batch_size": 2})


def test_single_label_outputs(single):
    rows = single.classify(TEXTS)
    assert len(rows) == len(TEXTS)
    for row in rows:
        assert row["label"] in {"neg", "neu", "pos"}
        assert set(row) == {"label", "prob_neg", "prob_neu", "prob_pos"}
        assert math.isclose(sum(row[f"prob_{x}"] for x in ("neg", "neu", "pos")), 1, rel_tol=1e-5)
    assert single.provenance.classifier == "hf_sequence_classification"
    assert len(single.provenance.weights_hash) == 12


def test_length_sorting_preserves_order_and_is_deterministic(single):
    batch = single.classify(TEXTS)
    alone = [single.classify([t])[0] for t in TEXTS]
    for a, b in zip(batch, alone):
        assert a["label"] == b["label"]
        assert math.isclose(a["prob_pos"], b["prob_pos"], abs_tol=1e-5)
    assert single.classify(TEXTS) == batch


def test_one_megabyte_post_is_truncated_fast(single):
    t0 = time.perf_counter()
    [row] = single.classify(["word " * 210_000])
    assert time.perf_counter() - t0 < 5 and row["label"] in {"neg", "neu", "pos"}
    assert single.classify([]) == []


def test_multi_label_thresholds_and_other_rule(tiny_models):
    def build(**kw):
        return build_classifier("hf_sequence_classification",
                                {"model": tiny_models["multi"], **kw})

    rows = build(thresholds=0.0).classify(TEXTS[:2])
    assert all(r[f"label_{x}"] == 1 for r in rows for x in ("emotion", "intergroup", "moral"))
    strict = build(thresholds={"emotion": 1.1, "intergroup": 1.1, "moral": 1.1, "other": 1.1})
    assert [r["label_other"] for r in strict.classify(TEXTS[:2])] == [0, 0]
    ime = build(thresholds=1.1, other_label="other")
    for r in ime.classify(TEXTS[:3]):
        assert (r["label_emotion"], r["label_intergroup"], r["label_moral"], r["label_other"]) \
            == (0, 0, 0, 1)
        assert 0 < r["prob_moral"] < 1
    with pytest.raises(ClassifierConfigError, match="params.bogus: unknown param"):
        build(bogus=1)
    with pytest.raises(ValueError, match="unknown labels"):
        build(thresholds={"nope": 0.2})


def test_embedding_prototypes_on_tiny_encoder(tiny_models):
    clf = build_classifier("embedding_prototypes", {
        "model": tiny_models["encoder"],
        "labels": {"a": ["groups fighting"], "b": ["my breakfast", "my cat"]}})
    rows = clf.classify(TEXTS)
    assert [set(r) for r in rows] == [{"label", "prob_a", "prob_b"}] * len(TEXTS)
    assert all(math.isclose(r["prob_a"] + r["prob_b"], 1, rel_tol=1e-5) for r in rows)


def test_packaged_minilm_scores_intergroup_higher():
    clf = build_classifier("embedding_prototypes",
                           {"labels_file": "configs/labels/intergroup.yaml"})
    group, personal = clf.classify([
        "Republicans and Democrats hate each other and fight over every election.",
        "I made pancakes for breakfast and then took a nap on the sofa."])
    assert group["prob_intergroup"] > personal["prob_intergroup"]
    assert group["label"] == "intergroup" and personal["label"] == "not_intergroup"
    assert clf.provenance.model == "packaged:all-MiniLM-L6-v2"


def test_poison_is_isolated_by_bisection():
    clf = build_classifier("tests.plugins:KeywordClassifier")
    texts = [f"post about group {i}" for i in range(64)]
    texts[37] = "this one has POISON in it"
    outcomes = classify_isolating(clf, texts)
    assert sum(o.ok for o in outcomes) == 63
    assert not outcomes[37].ok and "POISON" in outcomes[37].reason
    assert outcomes[0].labels == {"label": "intergroup", "prob_intergroup": 0.9}
    assert clf.calls <= 2 * 6 + 1  # bisection, not one call per post


def test_unusable_outputs_are_failures_not_crashes():
    wrong = classify_isolating(build_classifier("tests.plugins:WrongLength"), ["aaaaa", "bbbbb"])
    assert [o.ok for o in wrong] == [False, False]
    assert "2 results for 1 inputs" in wrong[0].reason
    nan = classify_isolating(build_classifier("tests.plugins:NaNScores"),
                             ["fine text", "nan-me please", "also fine"])
    assert [o.ok for o in nan] == [True, False, True] and "non-finite" in nan[1].reason
    assert classify_isolating(build_classifier("tests.plugins:NaNScores"), []) == []


def test_registry_errors(tmp_path):
    with pytest.raises(ClassifierConfigError, match="unknown classifier type"):
        build_classifier("nope")
    with pytest.raises(ClassifierConfigError, match="cannot import"):
        build_classifier("tests.nothing_here:Clf")
    with pytest.raises(FileNotFoundError, match="local model folder .* not found"):
        build_classifier("hf_sequence_classification", {"model": str(tmp_path / "missing")})
    with pytest.raises(ValueError, match="no CUDA GPU"):
        build_classifier("tests.plugins:KeywordClassifier")  # fine
        from classifiers.hf.runtime import pick_device
        import torch
        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
        pick_device("cuda")
