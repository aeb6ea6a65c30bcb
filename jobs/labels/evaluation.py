"""``--evaluate GOLD``: the integration's labels against a hand-labelled sample.

Accuracy, per-label precision/recall/F1, macro-F1, the confusion matrix, Cohen's kappa and
coverage (gold posts not labelled yet), for one config_hash (the latest by default); saved as
``<data_dir>/reports/<integration>-eval-<config_hash>.json`` with a reliability plot when the
output has ``prob_<label>`` columns.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from jobs.config import BackfillConfig, ConfigError
from jobs.labels.output import latest_config_hash, output_dataset, prob_columns
from queue_store.location import Location


class LabelScores(BaseModel):
    precision: float
    recall: float
    f1: float
    support: int


class Evaluation(BaseModel):
    integration: str
    config_hash: str
    gold_file: str
    gold_column: str
    gold_posts: int
    evaluated: int                       # gold posts with a label of this config_hash
    not_labelled: int                    # gold posts without one yet (coverage)
    coverage: float
    accuracy: float
    macro_f1: float
    cohen_kappa: float
    labels: list[str]
    per_label: dict[str, LabelScores]
    confusion: list[list[int]]           # rows: gold label, columns: predicted (``labels``)
    calibration_plot: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    def text(self) -> str:
        w = max(len(x) for x in self.labels + ["label"])
        lines = [f"evaluation of {self.integration} (config_hash {self.config_hash or '-'}) "
                 f"against {self.gold_file}",
                 f"gold posts {self.gold_posts}, evaluated {self.evaluated}, not labelled yet "
                 f"{self.not_labelled} (coverage {self.coverage:.1%})",
                 f"accuracy {self.accuracy:.4f}   macro-F1 {self.macro_f1:.4f}   "
                 f"Cohen's kappa {self.cohen_kappa:.4f}", "",
                 f"{'label'.ljust(w)}  precision  recall      F1  support"]
        for name in self.labels:
            s = self.per_label[name]
            lines.append(f"{name.ljust(w)}  {s.precision:9.4f} {s.recall:7.4f} {s.f1:7.4f} "
                         f"{s.support:8d}")
        lines += ["", "confusion (rows gold, columns predicted): " + " ".join(self.labels)]
        lines += [f"{name.ljust(w)}  " + " ".join(f"{v:6d}" for v in row)
                  for name, row in zip(self.labels, self.confusion)]
        if "weighted_accuracy" in self.extra:
            lines.insert(3, f"weighted by the sample's strata: accuracy "
                            f"{self.extra['weighted_accuracy']:.4f}   macro-F1 "
                            f"{self.extra['weighted_macro_f1']:.4f}")
        if self.calibration_plot:
            lines.append(f"reliability plot: {self.calibration_plot}")
        return "\n".join(lines)


def read_gold(where: Location, column: str) -> pa.Table:
    """The gold file's (uri, gold label) pairs, as text, one per uri (a local file or an
    object). Empty files, repeated uris with conflicting labels and uris that are not text are
    one clear line each."""
    path = where.uri
    try:
        info = where.fs.get_file_info(where.path)
    except OSError:
        info = None
    if info is None or info.type != pafs.FileType.File:
        raise ConfigError(f"gold file {path!r} not found")
    try:
        with where.fs.open_input_file(where.path) as fh:
            if where.path.lower().endswith((".parquet", ".pq")):
                table = pq.read_table(fh)
            else:
                table = pacsv.read_csv(fh, convert_options=pacsv.ConvertOptions(
                    column_types={"uri": pa.string(), column: pa.string()},
                    strings_can_be_null=True))  # an empty gold cell: not annotated yet
    except (pa.ArrowException, OSError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "Empty CSV file" in text or info.size == 0:
            raise ConfigError(f"gold file {path} is empty: it needs a header (uri and the "
                              "gold label column) and one row per hand-labelled post") from None
        raise ConfigError(f"gold file {path}: cannot be read ({text})") from None
    missing = [c for c in ("uri", column) if c not in table.column_names]
    if missing:
        raise ConfigError(f"gold file {path} lacks column(s) {missing}; it needs uri and the "
                          "gold label column (--gold-column)")
    if not table.num_rows:
        raise ConfigError(f"gold file {path} has no rows: nothing to evaluate against")
    uri = table.column("uri")
    if not pa.types.is_string(uri.type) and not pa.types.is_large_string(uri.type):
        if not (pa.types.is_integer(uri.type) or pa.types.is_null(uri.type)):
            raise ConfigError(f"gold file {path}: column uri holds {uri.type}, not post uris")
        uri = pc.cast(uri, pa.string())  # numeric ids, compared as the text they print as
    gold = pc.cast(table.column(column), pa.string())
    columns = {"uri": pc.cast(uri, pa.string()), "gold": gold}
    if "weight" in table.column_names:  # an annotation sample's (--sample-for-annotation)
        columns["weight"] = pc.cast(table.column("weight"), pa.float64())
    pairs = pa.table(columns).filter(pc.and_(pc.is_valid(gold), pc.is_valid(uri)))
    distinct = pairs.group_by(["uri", "gold"]).aggregate(
        [("weight", "max")] if "weight" in columns else [])
    if "weight_max" in distinct.column_names:
        distinct = distinct.rename_columns(["weight" if c == "weight_max" else c
                                            for c in distinct.column_names])
    labels_per_uri = distinct.group_by("uri").aggregate([("gold", "count")])
    conflicting = labels_per_uri.filter(pc.greater(labels_per_uri.column("gold_count"), 1))
    if conflicting.num_rows:
        shown = ", ".join(conflicting.column("uri").to_pylist()[:3])
        raise ConfigError(f"gold file {path}: {conflicting.num_rows} uri(s) have conflicting "
                          f"gold labels (e.g. {shown}); keep one label per post")
    return distinct


def evaluate(config: BackfillConfig, integration: str, gold_path: str,
             gold_column: str = "label", config_hash: str | None = None) -> Evaluation:
    from sklearn.metrics import (accuracy_score, cohen_kappa_score, confusion_matrix,
                                 f1_score, precision_recall_fscore_support)

    gold = read_gold(config.location(gold_path), gold_column)
    dataset = output_dataset(config, integration)
    version = config_hash if config_hash is not None else latest_config_hash(dataset)
    where = pads.field("uri").isin(gold.column("uri").combine_chunks())
    if version and "config_hash" in dataset.schema.names:
        where = where & (pads.field("config_hash") == version)
    probs = prob_columns(dataset)
    pred = dataset.to_table(columns=["uri", "label", *probs], filter=where)
    pred = pred.set_column(pred.column_names.index("label"), "label",
                           pc.cast(pred.column("label"), pa.string()))
    joined = gold.join(pred, "uri", join_type="inner")
    if not joined.num_rows:
        raise ConfigError(f"none of the {gold.num_rows} gold posts has a label of config_hash "
                          f"{version or '-'} yet")
    y_true = joined.column("gold").to_pylist()
    y_pred = [p if p is not None else "(none)" for p in joined.column("label").to_pylist()]
    labels = sorted(set(y_true) | set(y_pred))
    prec, rec, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    reports = Path(config.data_dir) / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    stem = f"{integration}-eval-{version or 'all'}"
    plot = _reliability_plot(joined, labels, probs, reports / f"{stem}.png")
    result = Evaluation(
        integration=integration, config_hash=version, gold_file=str(gold_path),
        gold_column=gold_column, gold_posts=gold.num_rows, evaluated=joined.num_rows,
        not_labelled=gold.num_rows - joined.num_rows,
        coverage=round(joined.num_rows / gold.num_rows, 6),
        accuracy=float(accuracy_score(y_true, y_pred)),
        macro_f1=float(f1_score(y_true, y_pred, labels=labels, average="macro",
                                zero_division=0)),
        cohen_kappa=float(cohen_kappa_score(y_true, y_pred, labels=labels)),
        labels=labels,
        per_label={lab: LabelScores(precision=float(p), recall=float(r), f1=float(f),
                                    support=int(s))
                   for lab, p, r, f, s in zip(labels, prec, rec, f1, support)},
        confusion=confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        calibration_plot=plot)
    if "weight" in joined.column_names:  # stratified sample: estimates for the whole output
        weights = pc.fill_null(joined.column("weight"), 1.0).to_pylist()
        result.extra["weighted_accuracy"] = float(accuracy_score(y_true, y_pred,
                                                                 sample_weight=weights))
        result.extra["weighted_macro_f1"] = float(f1_score(
            y_true, y_pred, labels=labels, average="macro", sample_weight=weights,
            zero_division=0))
    (reports / f"{stem}.json").write_text(result.model_dump_json(indent=2))
    return result


def _reliability_plot(joined: pa.Table, labels: list[str], probs: list[str],
                      path: Path) -> str | None:
    """Predicted probability vs observed frequency, one line per label with a prob_ column."""
    pairs = [(lab, f"prob_{lab}") for lab in labels if f"prob_{lab}" in probs]
    if not pairs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.calibration import calibration_curve

    y_true = np.array(joined.column("gold").to_pylist(), dtype=object)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    for lab, col in pairs:
        p = np.array(joined.column(col).to_pylist(), dtype=float)
        ok = ~np.isnan(p)
        if ok.sum() < 2:
            continue
        frac, mean = calibration_curve(y_true[ok] == lab, p[ok], n_bins=10, strategy="uniform")
        ax.plot(mean, frac, marker="o", label=f"{lab}")
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency (gold)")
    ax.set_title("Reliability")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
