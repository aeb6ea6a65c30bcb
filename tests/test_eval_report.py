"""--evaluate against a gold file with known metrics; --report as a page a browser opens."""
from __future__ import annotations

import base64
import io
import json
from datetime import datetime, timezone
from html.parser import HTMLParser

import pytest

from jobs.backfill import main
from jobs.config import parse_config
from jobs.labels.evaluation import evaluate
from jobs.labels.report import write_report
from tests.queue_helpers import Store, complete, export_output, input_uris, posts_of, queued_uris

NAME = "ml_inference_intergroup"
PRED = ["a", "a", "a", "a", "b", "b", "b", "b", "a", "b"]
GOLD = ["a", "a", "a", "b", "b", "b", "b", "a", "a", "a"]


def _labelled_output(tmp_path):
    """Ten posts labelled by version v2 (newer) and, differently, by v1 (older)."""
    store = Store(tmp_path, NAME)
    posts = [{"uri": f"u{i}", "text": f"post number {i} text",
              "preprocessing_timestamp": f"2024-10-0{1 + i % 3}-10:00:00"} for i in range(10)]
    for version, stamp, labels in (("v1", datetime(2026, 1, 1, tzinfo=timezone.utc), ["b"] * 10),
                                   ("v2", datetime(2026, 2, 1, tzinfo=timezone.utc), PRED)):
        store.enqueue(posts, config_hash=version, relabel=True)
        [b] = store.claim(1, config_hash=version)
        complete(store, b, {
            p["uri"]: {"label_timestamp": stamp, "label": lab,
                       "prob_a": 0.9 if lab == "a" else 0.2,
                       "prob_b": 0.1 if lab == "a" else 0.8, "config_hash": version}
            for p, lab in zip(posts_of(b), labels)}, {})
    export_output(store, tmp_path / NAME)
    gold = tmp_path / "gold.csv"
    gold.write_text("uri,label\n" + "".join(f"u{i},{g}\n" for i, g in enumerate(GOLD))
                    + "u10,a\nu11,b\n")  # two gold posts not labelled yet
    return parse_config({"data_dir": str(tmp_path), "integrations": {NAME: {
        "code": "g", "classifier": {"type": "constant"}}}}), gold


def test_evaluation_metrics_are_exact(tmp_path):
    config, gold = _labelled_output(tmp_path)
    ev = evaluate(config, NAME, str(gold))
    assert ev.config_hash == "v2"  # the latest labels by default
    assert (ev.gold_posts, ev.evaluated, ev.not_labelled) == (12, 10, 2)
    assert ev.accuracy == pytest.approx(0.7)
    assert ev.labels == ["a", "b"] and ev.confusion == [[4, 2], [1, 3]]
    assert ev.per_label["a"].precision == pytest.approx(0.8)
    assert ev.per_label["a"].recall == pytest.approx(4 / 6)
    assert ev.per_label["b"].f1 == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert ev.macro_f1 == pytest.approx((2 * 0.8 * (4 / 6) / (0.8 + 4 / 6)
                                         + 2 * 0.6 * 0.75 / 1.35) / 2)
    assert ev.cohen_kappa == pytest.approx(0.4)  # (0.7 - 0.5) / (1 - 0.5)
    saved = json.loads((tmp_path / "reports" / f"{NAME}-eval-v2.json").read_text())
    assert saved["accuracy"] == pytest.approx(0.7)
    assert (tmp_path / "reports" / f"{NAME}-eval-v2.png").read_bytes()[:4] == b"\x89PNG"
    old = evaluate(config, NAME, str(gold), config_hash="v1")
    assert old.accuracy == pytest.approx(0.4) and old.config_hash == "v1"


def test_cli_prints_the_evaluation(tmp_path, capsys):
    config, gold = _labelled_output(tmp_path)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(config.model_dump(mode="json")))
    assert main(["--config", str(cfg), "-i", "g", "--evaluate", str(gold)]) == 0
    out = capsys.readouterr().out
    assert "accuracy 0.7000" in out and "Cohen's kappa 0.4000" in out and "coverage 83.3%" in out


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.cells, self._in_td = [], [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        self._in_td = tag == "td"

    def handle_data(self, data):
        if self._in_td:
            self.cells.append(data.strip())


def test_report_opens_and_its_numbers_match_the_parquet(tmp_path):
    import matplotlib.image as mpimg

    config, _ = _labelled_output(tmp_path)
    path = write_report(config, NAME)
    page = _Page()
    page.feed(path.read_text())
    assert len(page.images) == 3  # label share per day + two probability histograms
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert mpimg.imread(io.BytesIO(png), format="png").shape[2] in (3, 4)
    cells = page.cells
    assert cells[cells.index("labelled (this config_hash)") + 1] == "10"
    assert cells[cells.index("a") + 1] == "5" and cells[cells.index("b") + 1] == "5"
    assert sum(1 for c in cells if c.startswith("post number")) == 10  # samples per label


def test_report_counts_only_the_chosen_versions_dead_letters(tmp_path):
    config, _ = _labelled_output(tmp_path)
    store = Store(tmp_path, NAME, max_attempts=1)
    for version, n in (("v1", 3), ("v2", 1)):  # dead letters of both versions
        posts = [{"uri": f"dead-{version}-{i}", "text": "a post that keeps failing",
                  "preprocessing_timestamp": "2024-10-01"} for i in range(n)]
        store.enqueue(posts, config_hash=version)
        [b] = store.claim(1, config_hash=version)
        assert store.fail(b.batch_id, b.lease_id, f"broken under {version}")
    page = write_report(config, NAME, "v2").read_text()
    assert "<td>dead-lettered</td><td class=n>1</td>" in page
    assert "broken under v2" in page and "broken under v1" not in page
    page = write_report(config, NAME, "v1").read_text()
    assert "<td>dead-lettered</td><td class=n>3</td>" in page


def test_gold_files_with_repeats_other_uri_types_or_no_rows_get_one_clear_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.config import ConfigError

    config, gold = _labelled_output(tmp_path)
    repeated = tmp_path / "repeated.csv"
    repeated.write_text(gold.read_text() + "u0,a\nu1,a\n")  # the same labels again
    assert evaluate(config, NAME, str(repeated)).gold_posts == 12
    conflicting = tmp_path / "conflicting.csv"
    conflicting.write_text(gold.read_text() + "u0,b\n")  # u0 is 'a' above
    with pytest.raises(ConfigError, match="1 uri.*conflicting gold labels.*u0"):
        evaluate(config, NAME, str(conflicting))
    numeric = tmp_path / "numeric.parquet"
    pq.write_table(pa.table({"uri": [1, 2, 3], "label": ["a", "b", "a"]}), numeric)
    with pytest.raises(ConfigError, match="none of the 3 gold posts has a label"):
        evaluate(config, NAME, str(numeric))
    for empty, text in (("empty.csv", ""), ("header.csv", "uri,label\n")):
        (tmp_path / empty).write_text(text)
        with pytest.raises(ConfigError, match="is empty|has no rows"):
            evaluate(config, NAME, str(tmp_path / empty))


def test_demo_gold_holds_exactly_the_posts_enqueue_accepts(tmp_path):
    from datetime import date

    from jobs.tools.demo_data import write_demo, write_gold

    write_demo(tmp_path / "posts", 800, 2, date(2024, 10, 1))
    write_gold(tmp_path / "posts", tmp_path / "gold.csv")
    gold = {line.split(",")[0] for line in (tmp_path / "gold.csv").read_text().splitlines()[1:]}
    store = Store(tmp_path / "data", NAME)
    import pyarrow.dataset as pads

    store.enqueue(pads.dataset(tmp_path / "posts", partitioning="hive").to_table(
        columns=["uri", "text", "preprocessing_timestamp"]))
    assert queued_uris(store, input_uris(tmp_path / "posts")) == gold
