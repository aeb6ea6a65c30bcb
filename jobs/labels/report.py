"""``--report NAME``: a self-contained HTML page about an integration's labels.

Counts (labelled, dead-lettered with the top reasons, pending), the label share per
``partition_date`` over time, a probability histogram per label and sample posts per label,
for one config_hash (the latest by default). Charts are matplotlib PNGs embedded as data
URIs, so the page is one file. The output is scanned in bounded batches: memory does not
grow with the number of posts.
"""
from __future__ import annotations

import base64
import html
import io
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field

from jobs.config import BackfillConfig
from jobs.labels.output import (batches, latest_config_hash, output_dataset, prob_columns,
                               version_filter)
from queue_store import NoQueueError, QueueStore

SAMPLES_PER_LABEL = 10
BINS = np.linspace(0.0, 1.0, 21)


class ReportFigures(BaseModel):
    integration: str
    config_hash: str
    labelled: int = 0
    failed_rows: int = 0
    dead_lettered: int = 0
    top_dead_reasons: list[tuple[str, int]] = Field(default_factory=list)
    pending: int = 0
    label_counts: dict[str, int] = Field(default_factory=dict)
    by_day: dict[str, dict[str, int]] = Field(default_factory=dict)
    histograms: dict[str, list[int]] = Field(default_factory=dict)
    samples: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)


def collect(config: BackfillConfig, integration: str,
            config_hash: str | None = None) -> ReportFigures:
    dataset = output_dataset(config, integration)
    version = config_hash if config_hash is not None else latest_config_hash(dataset)
    probs = prob_columns(dataset)
    fig = ReportFigures(integration=integration, config_hash=version)
    by_day: dict[str, Counter] = defaultdict(Counter)
    hist = {p: np.zeros(len(BINS) - 1, dtype=np.int64) for p in probs}
    cols = ["uri", "text", "label", "partition_date", "was_successfully_labeled", *probs]
    for batch in batches(dataset, cols, version_filter(dataset, version)):
        table = pa.Table.from_batches([batch])
        labels = [str(x) for x in table.column("label").to_pylist()]
        days = table.column("partition_date").to_pylist()
        fig.labelled += table.num_rows
        for day, lab in zip(days, labels):
            by_day[day][lab] += 1
        for p in probs:
            values = table.column(p).to_numpy(zero_copy_only=False).astype(float)
            hist[p] += np.histogram(values[~np.isnan(values)], bins=BINS)[0]
        for i, lab in enumerate(labels):
            taken = fig.samples.setdefault(lab, [])
            if len(taken) < SAMPLES_PER_LABEL:
                taken.append({"uri": table.column("uri")[i].as_py(),
                              "text": table.column("text")[i].as_py(),
                              **{p: table.column(p)[i].as_py() for p in probs}})
    fig.by_day = {d: dict(c) for d, c in sorted(by_day.items())}
    fig.label_counts = dict(sum(by_day.values(), Counter()))
    fig.histograms = {p: h.tolist() for p, h in hist.items()}
    try:
        store = QueueStore(config.data_dir, integration, readonly=True)
    except NoQueueError:
        return fig
    try:  # this version's dead letters and pending posts only
        st = store.status(version or None)
        fig.dead_lettered = st.dead_posts + st.dead_undecodable_rows
        fig.pending = st.pending_posts + st.processing_posts
        fig.top_dead_reasons = store.dead_reasons(5, version or None)
    finally:
        store.close()
    return fig


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _charts(fig: ReportFigures) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charts = []
    days = list(fig.by_day)
    if days:
        f, ax = plt.subplots(figsize=(8, 3.5))
        for lab in sorted(fig.label_counts):
            share = [fig.by_day[d].get(lab, 0) / max(sum(fig.by_day[d].values()), 1)
                     for d in days]
            ax.plot(days, share, marker="o", label=lab)
        ax.set_ylabel("share of the day's posts")
        ax.set_ylim(0, 1)
        ax.set_title("Label share per partition_date")
        ax.legend(fontsize=8)
        f.autofmt_xdate()
        f.tight_layout()
        charts.append(("Label share per day", _png(f)))
    for p, counts in fig.histograms.items():
        f, ax = plt.subplots(figsize=(5, 3))
        ax.bar(BINS[:-1], counts, width=BINS[1] - BINS[0], align="edge")
        ax.set_xlabel(p)
        ax.set_ylabel("posts")
        ax.set_title(f"Distribution of {p}")
        f.tight_layout()
        charts.append((f"Histogram of {p}", _png(f)))
    return charts


def render(fig: ReportFigures) -> str:
    e = html.escape
    rows = "".join(f"<tr><td>{e(k)}</td><td class=n>{v}</td></tr>" for k, v in (
        ("labelled (this config_hash)", fig.labelled), ("dead-lettered", fig.dead_lettered),
        ("pending or in progress", fig.pending)))
    labels = "".join(f"<tr><td>{e(k)}</td><td class=n>{v}</td></tr>"
                     for k, v in sorted(fig.label_counts.items()))
    reasons = "".join(f"<li>{n} × {e(r)}</li>" for r, n in fig.top_dead_reasons) or "<li>none</li>"
    charts = "".join(f"<figure><img alt='{e(t)}' src='data:image/png;base64,{b}'>"
                     f"<figcaption>{e(t)}</figcaption></figure>" for t, b in _charts(fig))
    samples = ""
    for lab, posts in sorted(fig.samples.items()):
        items = "".join(
            "<tr><td>" + e(p["text"] or "") + "</td><td>" + ", ".join(
                f"{k}={v:.3f}" for k, v in p.items() if k.startswith("prob_") and v is not None)
            + "</td></tr>" for p in posts)
        samples += f"<h3>label {e(lab)}</h3><table class=s>{items}</table>"
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>{e(fig.integration)} labels</title><style>
body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}
td{{padding:2px 10px;border-bottom:1px solid #ddd}} .n{{text-align:right}}
table.s td{{font-size:90%}} figure{{display:inline-block;margin:1em}}</style></head><body>
<h1>{e(fig.integration)}</h1><p>config_hash <code>{e(fig.config_hash or '-')}</code></p>
<h2>Counts</h2><table id=counts>{rows}</table>
<h2>Labels</h2><table id=labels>{labels}</table>
<h2>Top dead-letter reasons</h2><ul>{reasons}</ul>
<h2>Charts</h2>{charts}
<h2>Samples (up to {SAMPLES_PER_LABEL} per label)</h2>{samples}
</body></html>"""


def write_report(config: BackfillConfig, integration: str,
                 config_hash: str | None = None) -> Path:
    fig = collect(config, integration, config_hash)
    path = Path(config.data_dir) / "reports" / f"{integration}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(fig))
    return path
