"""Stream input posts from ``<path>/partition_date=YYYY-MM-DD/*.parquet`` in bounded batches."""
from __future__ import annotations

from datetime import date
from typing import Iterator

import pyarrow as pa
import pyarrow.dataset as pads

from jobs.config import ConfigError
from queue_store.validation import POST_COLUMNS

PARTITIONING = pads.partitioning(pa.schema([("partition_date", pa.string())]), flavor="hive")


def open_posts(path: str) -> pads.Dataset:
    """A local folder or any pyarrow filesystem URI (s3://, gs://, file://...)."""
    try:
        dataset = pads.dataset(path, format="parquet", partitioning=PARTITIONING)
    except (FileNotFoundError, OSError, pa.ArrowInvalid) as exc:
        raise ConfigError(f"posts path {path!r} cannot be read ({exc}); set posts.path in the "
                          "config to a folder of partition_date=YYYY-MM-DD/*.parquet") from None
    missing = [c for c in POST_COLUMNS if c not in dataset.schema.names]
    if missing:
        raise ConfigError(f"posts at {path!r} lack column(s) {missing}; "
                          f"need {list(POST_COLUMNS)}")
    return dataset


def iter_posts(path: str, start: date | None, end: date | None,
               batch_rows: int = 50_000) -> Iterator[pa.RecordBatch]:
    """Posts whose ``partition_date`` folder lies in [start, end] (inclusive both ends)."""
    dataset = open_posts(path)
    where = None
    day = pads.field("partition_date")
    if start is not None:
        where = day >= start.isoformat()
    if end is not None:
        upper = day <= end.isoformat()
        where = upper if where is None else where & upper
    # No readahead, no threaded decode: threaded scans decode far ahead (measured ~140 MB
    # held for 10k-row batches); one thread keeps the reader at ~12 MB.
    scanner = dataset.scanner(columns=list(POST_COLUMNS), filter=where, batch_size=batch_rows,
                              batch_readahead=1, fragment_readahead=1, use_threads=False)
    for batch in scanner.to_batches():
        if batch.num_rows:
            yield batch
