"""A sample of labelled posts to annotate by hand, the step that makes ``--evaluate`` usable.

Strata are (predicted label, confidence band): confidence is the highest ``prob_*`` of the
post, banded ``low`` (< 0.6), ``mid`` (< 0.8) and ``high``; a classifier without probabilities
has one band. Every label gets an equal share of the sample and, within a label, the least
certain band the largest (``BAND_SHARE``), so the posts a model is likely to get wrong are
over-represented. Each sampled post carries its stratum's ``weight`` (posts in the stratum ÷
posts sampled from it): ``--evaluate`` re-weights with it, so accuracy estimates stay unbiased
for the whole output. Two streaming passes (counts, then a seeded reservoir per stratum): memory
stays bounded by the sample, whatever the output's size.
"""
from __future__ import annotations

import csv
import html
import random
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
from pydantic import BaseModel

from jobs.config import BackfillConfig, ConfigError
from jobs.labels.output import (batches, latest_config_hash, output_dataset, prob_columns,
                                version_filter)

BANDS = (("low", 0.6), ("mid", 0.8), ("high", 1.01))
BAND_SHARE = {"low": 0.5, "mid": 0.3, "high": 0.2, "all": 1.0}
COLUMNS = ["uri", "text", "predicted", "confidence", "stratum", "weight", "gold"]


class AnnotationSample(BaseModel):
    integration: str
    config_hash: str
    csv: str
    html: str
    posts: int                       # in the sample
    population: int                  # labelled posts of this config_hash
    per_stratum: dict[str, list[int]]  # stratum -> [population, sampled]


def sample_for_annotation(config: BackfillConfig, integration: str, n: int, seed: int = 0,
                          config_hash: str | None = None) -> AnnotationSample:
    dataset = output_dataset(config, integration)
    version = config_hash if config_hash is not None else latest_config_hash(dataset)
    where = version_filter(dataset, version)
    probs = prob_columns(dataset)
    columns = ["uri", "text", "label", *probs]
    counts: dict[tuple[str, str], int] = {}
    for batch in batches(dataset, columns, where):
        for key in _strata(batch, probs):
            counts[key] = counts.get(key, 0) + 1
    if not counts:
        raise ConfigError(f"no labels of config_hash {version or '-'} for {integration!r}")
    quota = _allocate(counts, n)
    rng = random.Random(seed)
    reservoirs: dict[tuple[str, str], list[dict[str, Any]]] = {k: [] for k in quota}
    seen: dict[tuple[str, str], int] = {}
    for batch in batches(dataset, columns, where):
        rows = batch.to_pylist()
        for key, row in zip(_strata(batch, probs), rows):
            if not quota.get(key):
                continue
            seen[key] = seen.get(key, 0) + 1
            res = reservoirs[key]
            if len(res) < quota[key]:
                res.append(row)
            elif (j := rng.randrange(seen[key])) < quota[key]:
                res[j] = row
    out: list[dict[str, Any]] = []
    for key, res in sorted(reservoirs.items()):
        weight = counts[key] / len(res) if res else 0.0
        for row in res:
            conf = max((row[p] for p in probs if row.get(p) is not None), default=None)
            out.append({"uri": row["uri"], "text": row["text"], "predicted": row["label"],
                        "confidence": None if conf is None else round(conf, 4),
                        "stratum": f"{key[0]}|{key[1]}", "weight": round(weight, 6),
                        "gold": ""})
    rng.shuffle(out)  # annotators should not see the strata in order
    reports = Path(config.data_dir) / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    stem = reports / f"{integration}-annotation-{version or 'all'}-seed{seed}"
    _write_csv(stem.with_suffix(".csv"), out)
    _write_html(stem.with_suffix(".html"), out, integration, version)
    return AnnotationSample(
        integration=integration, config_hash=version, csv=str(stem.with_suffix(".csv")),
        html=str(stem.with_suffix(".html")), posts=len(out), population=sum(counts.values()),
        per_stratum={f"{k[0]}|{k[1]}": [counts[k], len(reservoirs[k])] for k in sorted(counts)})


def _strata(batch: Any, probs: list[str]) -> list[tuple[str, str]]:
    labels = [str(x) for x in batch.column("label").to_pylist()]
    if not probs:
        return [(label, "all") for label in labels]
    top = pc.max_element_wise(*[batch.column(p) for p in probs]).to_pylist()
    return [(label, _band(c)) for label, c in zip(labels, top)]


def _band(confidence: float | None) -> str:
    if confidence is None:
        return "low"
    return next(name for name, upper in BANDS if confidence < upper)


def _allocate(counts: dict[tuple[str, str], int], n: int) -> dict[tuple[str, str], int]:
    """An equal share per label, split over its bands by ``BAND_SHARE``; what a stratum cannot
    fill (too few posts) goes to the others, so the sample reaches ``n`` when it can."""
    quota = {k: 0 for k in counts}
    left = min(n, sum(counts.values()))
    while left > 0:
        open_ = [k for k in counts if quota[k] < counts[k]]
        labels = sorted({k[0] for k in open_})
        given = 0
        for label in labels:
            mine = [k for k in open_ if k[0] == label]
            share = sum(BAND_SHARE[k[1]] for k in mine)
            for k in mine:
                want = max(1, round(left / len(labels) * BAND_SHARE[k[1]] / share))
                take = min(want, counts[k] - quota[k], left - given)
                quota[k] += take
                given += take
        if not given:
            break
        left -= given
    return quota


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _write_html(path: Path, rows: list[dict[str, Any]], integration: str, version: str) -> None:
    cells = "".join(
        f"<tr><td>{i + 1}</td><td>{html.escape(str(r['text']))}</td>"
        f"<td>{html.escape(str(r['predicted']))}</td><td>{r['confidence'] or ''}</td>"
        f"<td><code>{html.escape(r['uri'])}</code></td></tr>" for i, r in enumerate(rows))
    path.write_text(
        "<!doctype html><meta charset='utf-8'><title>annotation sample</title>"
        "<style>body{font:15px sans-serif;margin:2em}td{padding:.4em;vertical-align:top;"
        "border-bottom:1px solid #ddd}td:nth-child(2){max-width:40em}</style>"
        f"<h1>{html.escape(integration)} — {len(rows)} posts to label</h1>"
        f"<p>config_hash {html.escape(version or '-')}. Write each post's true label in the "
        "<code>gold</code> column of the CSV beside this page, then run "
        "<code>--evaluate FILE --gold-column gold</code>.</p>"
        f"<table><tr><th>#</th><th>text</th><th>predicted</th><th>confidence</th><th>uri</th>"
        f"</tr>{cells}</table>", encoding="utf-8")
