"""Which posts of the selected files an enqueue keeps, beyond the date range of their
partitions: a reproducible sample, and a relative time window.

The sample is decided by the uri alone: a post is kept when the 64-bit XXH3 hash of its uri
(with the seed) falls below ``proportion`` of the hash range — the same post is in or out for
every integration and every rerun with the same proportion and seed, and a larger proportion
keeps a superset. The window keeps posts whose own timestamp (not only their partition) is at
or after ``since``. Posts without a usable uri or timestamp are kept here: validation rejects
them with their reason.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from pydantic import BaseModel, ConfigDict, Field

from queue_store.rows.validation import is_text_type

PERIODS = {"days": timedelta(days=1), "hours": timedelta(hours=1)}


class Selection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sample_proportion: float | None = Field(None, gt=0, le=1)  # None: every post
    sample_seed: int = 0
    since: datetime | None = None  # UTC; None: no window

    @classmethod
    def window(cls, period: str, duration: int, now: datetime | None = None,
               **sample: object) -> "Selection":
        """The last ``duration`` days or hours before ``now`` (UTC)."""
        now = now or datetime.now(timezone.utc)
        return cls(since=now - duration * PERIODS[period], **sample)

    @property
    def active(self) -> bool:
        return self.sample_proportion is not None or self.since is not None

    def keep(self, table: pa.Table) -> tuple[pa.Table, int, int]:
        """``(kept posts, sampled out, outside the window)``."""
        if not self.active or not table.num_rows:
            return table, 0, 0
        keep = np.ones(table.num_rows, dtype=bool)
        sampled_out = outside = 0
        if self.since is not None:
            inside = self._inside(table.column("preprocessing_timestamp"))
            outside = int((~inside).sum())
            keep &= inside
        if self.sample_proportion is not None:
            chosen = self._sampled(table.column("uri"))
            sampled_out = int((keep & ~chosen).sum())
            keep &= chosen
        return (table if keep.all() else table.filter(pa.array(keep))), sampled_out, outside

    def _sampled(self, uris: pa.ChunkedArray) -> np.ndarray:
        limit = int(self.sample_proportion * 2 ** 64)
        seed = self.sample_seed
        values = pc.cast(uris, pa.binary()).to_pylist() if is_text_type(uris.type) else \
            [None] * len(uris)
        return np.array([v is None or xxhash.xxh3_64_intdigest(v, seed) < limit
                         for v in values], dtype=bool)

    def _inside(self, stamps: pa.ChunkedArray) -> np.ndarray:
        """Both accepted forms (``YYYY-MM-DD-HH:MM:SS`` and ISO 8601) compared as
        ``YYYY-MM-DDTHH:MM:SS`` text; anything else is left to validation."""
        if not is_text_type(stamps.type):
            return np.ones(len(stamps), dtype=bool)
        text = pc.cast(stamps, pa.string())
        head = pc.utf8_slice_codeunits(text, 0, 19)
        normal = pc.binary_join_element_wise(pc.utf8_slice_codeunits(head, 0, 10), "T",
                                            pc.utf8_slice_codeunits(head, 11, 19), "")
        cutoff = self.since.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        shaped = pc.equal(pc.utf8_length(head), 19)
        inside = pc.or_kleene(pc.invert(shaped), pc.greater_equal(normal, cutoff))
        return np.asarray(pc.fill_null(inside, True).to_numpy(zero_copy_only=False), bool)

