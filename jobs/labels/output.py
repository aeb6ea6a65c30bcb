"""Reading an integration's labels back: one config_hash at a time, in bounded batches."""
from __future__ import annotations

from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from jobs.config import BackfillConfig, ConfigError


def output_dataset(config: BackfillConfig, integration: str) -> pads.Dataset:
    root = config.output_location(integration)
    if not root.has_parquet():
        raise ConfigError(f"no labels for {integration!r} under {root} yet; run "
                          "--run-integrations (and --write-cache) first")
    return root.dataset()


def latest_config_hash(dataset: pads.Dataset) -> str:
    """The config_hash of the most recently written labels."""
    if "config_hash" not in dataset.schema.names:
        return ""
    best: tuple[Any, str] | None = None
    for batch in dataset.to_batches(columns=["config_hash", "label_timestamp"]):
        table = pa.Table.from_batches([batch])
        if not table.num_rows or not table.column("label_timestamp").null_count < table.num_rows:
            continue
        i = pc.index(table.column("label_timestamp"),
                     pc.max(table.column("label_timestamp"))).as_py()
        stamp = table.column("label_timestamp")[i].as_py()
        if best is None or stamp > best[0]:
            best = (stamp, table.column("config_hash")[i].as_py() or "")
    return best[1] if best else ""


def version_filter(dataset: pads.Dataset, config_hash: str) -> pads.Expression | None:
    if not config_hash or "config_hash" not in dataset.schema.names:
        return None
    return pads.field("config_hash") == config_hash


def prob_columns(dataset: pads.Dataset) -> list[str]:
    return [n for n in dataset.schema.names if n.startswith("prob_")]


def batches(dataset: pads.Dataset, columns: list[str], where: pads.Expression | None
            ) -> Iterator[pa.RecordBatch]:
    cols = [c for c in columns if c in dataset.schema.names]
    yield from dataset.to_batches(columns=cols, filter=where, batch_size=64_000)
