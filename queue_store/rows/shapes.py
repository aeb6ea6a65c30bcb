"""The one definition of every row shape the pipeline passes around.

- a **post**: ``POST_COLUMNS`` (the queued fields; extra input columns are not carried);
- a **claimed post** (read task → classifier stage): the post plus ``CONTROL``, the claim it
  belongs to (``CLAIM_SCHEMA``);
- a **result row** (classifier stage → writer): a claimed post plus ``STATUS`` (labelled or
  not, and why), ``LABEL_TIME``, the classifier's label columns and ``PROVENANCE``;
- an **output row** (output queue → parquet): a result row without ``CONTROL`` and
  ``STATUS``; ``PARTITION`` is added by the parquet layout.

A classifier may not name a label column after any of these (``RESERVED``).
"""
from __future__ import annotations

from typing import Any

import pyarrow as pa

POST_COLUMNS = ("uri", "text", "preprocessing_timestamp")
# Which claim a row answers: its batch and the batch's size, the lease, and the posts of
# every batch that lease claimed (a claim is completed whole: one labelled file).
CONTROL = ("batch_id", "lease_id", "batch_posts", "claim_posts")
STATUS = ("was_successfully_labeled", "reason")
LABEL_TIME = "label_timestamp"
PROVENANCE = ("classifier", "model", "config_hash", "run_id")
PARTITION = "partition_date"
RESERVED = frozenset({*POST_COLUMNS, *CONTROL, *STATUS, LABEL_TIME, *PROVENANCE, PARTITION})

POST_SCHEMA = pa.schema([(name, pa.string()) for name in POST_COLUMNS])  # a queued batch
CLAIM_SCHEMA = pa.schema([*((name, pa.string()) for name in POST_COLUMNS),
                          ("batch_id", pa.int64()), ("lease_id", pa.string()),
                          ("batch_posts", pa.int64()), ("claim_posts", pa.int64())])
LABEL_TIME_TYPE = pa.timestamp("us", tz="UTC")


def post_of(row: dict[str, Any]) -> dict[str, Any]:
    """The post fields of any row that carries them (what a retry re-queues)."""
    return {k: row.get(k) for k in POST_COLUMNS}
