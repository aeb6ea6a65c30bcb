"""The annotation loop through the CLI: a stratified sample of labelled posts (least certain
over-represented, weights written, reproducible by seed), filled in by hand, evaluated with
re-weighted estimates beside the plain ones."""
from __future__ import annotations

import csv
import random

from jobs.backfill import main
from tests.queue_helpers import NAME, Store, complete, export_output, posts_of
from tests.cli_helpers import write_config
from tests.conftest import make_posts
from tests.pipeline_helpers import PLUGIN


def _labelled(tmp_path, n: int = 2000) -> None:
    """``n`` posts labelled with a probability: 80 % confident, 20 % not."""
    rng = random.Random(1)
    labels = {}
    for p in make_posts(n):
        prob = rng.uniform(0.5, 0.59) if rng.random() < 0.2 else rng.uniform(0.85, 0.99)
        intergroup = rng.random() < 0.3
        labels[p["uri"]] = {"label": "intergroup" if intergroup else "not_intergroup",
                            "prob_intergroup": prob if intergroup else 1 - prob,
                            "prob_not_intergroup": 1 - prob if intergroup else prob}
    store = Store(tmp_path / "data", NAME)
    store.enqueue(make_posts(n), batch_size=200)
    while batches := store.claim(max_batches=4):
        for b in batches:
            complete(store, b, {p["uri"]: labels[p["uri"]] for p in posts_of(b)})
    export_output(store, tmp_path / "data" / NAME)
    store.close()


def _sample(cfg, capsys, seed: int = 0) -> tuple[list[dict], str]:
    assert main(["--config", str(cfg), "-i", "g", "--sample-for-annotation", "100",
                 "--seed", str(seed)]) == 0
    out = capsys.readouterr().out
    path = next(x.strip() for x in out.splitlines() if x.strip().endswith(".csv"))
    assert "annotation sample: 100 of 2000 labelled posts" in out
    with open(path[:-4] + ".html", encoding="utf-8") as fh:
        assert fh.read().count("<tr>") == 101  # a header and one row per post
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh)), path


def test_a_stratified_sample_then_its_filled_file_evaluates_with_weights(tmp_path, capsys):
    _labelled(tmp_path)
    cfg = write_config(tmp_path, {"type": PLUGIN})
    rows, path = _sample(cfg, capsys)
    again, _ = _sample(cfg, capsys)
    other, _ = _sample(cfg, capsys, seed=5)
    assert {r["uri"] for r in rows} == {r["uri"] for r in again} != {r["uri"] for r in other}
    assert len(rows) == len({r["uri"] for r in rows}) == 100
    assert all(r["gold"] == "" for r in rows)
    # every label gets half; the uncertain fifth of the posts gets half of each label's share
    per_label = {lab: sum(r["predicted"] == lab for r in rows) for lab in
                 ("intergroup", "not_intergroup")}
    assert per_label == {"intergroup": 50, "not_intergroup": 50}
    uncertain = sum(float(r["confidence"]) < 0.6 for r in rows)
    assert uncertain >= 45  # 20 % of the output, ~50 % of the sample
    total = sum(float(r["weight"]) for r in rows)
    assert abs(total - 2000) < 1e-3  # the weights re-weight the sample to the whole output
    # an annotator agrees with every confident label and with none of the uncertain ones
    for r in rows:
        flip = {"intergroup": "not_intergroup", "not_intergroup": "intergroup"}
        r["gold"] = r["predicted"] if float(r["confidence"]) >= 0.6 else flip[r["predicted"]]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:90] + [dict(r, gold="") for r in rows[90:]])  # 10 left blank
    capsys.readouterr()
    assert main(["--config", str(cfg), "-i", "g", "--evaluate", path,
                 "--gold-column", "gold"]) == 0
    said = capsys.readouterr().out
    assert "gold posts 90" in said  # blank cells are posts not annotated yet
    plain = float(said.split("accuracy ")[1].split()[0])
    weighted = float(said.split("weighted by the sample's strata: accuracy ")[1].split()[0])
    assert plain < 0.6 < 0.75 < weighted < 0.85  # the output is 80 % confident posts
    # the weighted macro-F1 is scikit-learn's with the sample's weights (annotated rows only)
    from sklearn.metrics import f1_score

    done = rows[:90]
    want = f1_score([r["gold"] for r in done], [r["predicted"] for r in done],
                    average="macro", sample_weight=[float(r["weight"]) for r in done])
    unweighted = f1_score([r["gold"] for r in done], [r["predicted"] for r in done],
                          average="macro")
    said_f1 = float(said.split("weighted by the sample's strata: accuracy ")[1].split(
        "macro-F1 ")[1].split()[0])
    assert abs(said_f1 - want) < 1e-4 and abs(want - unweighted) > 0.05


def test_sampling_needs_one_integration_with_labels(tmp_path, capsys):
    cfg = write_config(tmp_path, {"type": PLUGIN})
    assert main(["--config", str(cfg), "-i", "g", "--sample-for-annotation", "10"]) == 2
    assert "no labels for 'ml_inference_intergroup'" in capsys.readouterr().err
