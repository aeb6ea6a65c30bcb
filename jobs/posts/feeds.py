"""``-r posts_used_in_feeds``: only the posts study users were actually shown.

The feed dataset (``feeds.path``: ``partition_date=YYYY-MM-DD/*.parquet`` with a ``uri``
column) holds, per feed day, the uris served that day. For each feed day D of the date range,
the posts enqueued are those of the look-back window — the posts partitions D − lookback_days
… D, none before ``feeds.earliest_date`` — whose uri was served on D. A post served on several
days is read more than once and queued once (the enqueue's own dedupe). Days of the range
without a feed partition are reported, not silently skipped. Memory: one day's served uris
(a hash set) and one batch of posts at a time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from jobs.config import BackfillConfig, ConfigError
from jobs.posts.source import READ_SCHEMA, PostFiles, partition_day
from queue_store.location import Location


@dataclass
class FeedDays:
    """The feed files of each day found, and the days of the range without any."""

    where: Location
    files: dict[date, list[str]] = field(default_factory=dict)
    missing: list[date] = field(default_factory=list)


def find_feed_days(config: BackfillConfig, start: date | None, end: date | None) -> FeedDays:
    if not config.feeds.path:
        raise ConfigError("-r posts_used_in_feeds needs feeds.path in the config (a folder of "
                          "partition_date=YYYY-MM-DD/*.parquet with a uri column)")
    where = config.location(config.feeds.path)
    try:
        infos = where.fs.get_file_info(pafs.FileSelector(where.path, recursive=True))
    except (FileNotFoundError, OSError) as exc:
        raise ConfigError(f"feeds path {where.uri!r} cannot be read ({exc})") from None
    found = FeedDays(where)
    for info in infos:
        day = partition_day(info.path)
        if info.type != pafs.FileType.File or not info.path.endswith(".parquet") or not day:
            continue
        if (start is None or day >= start) and (end is None or day <= end):
            _check_feed_file(where, info.path)
            found.files.setdefault(day, []).append(info.path)
    if not found.files and (start is None or end is None):
        raise ConfigError(f"no feed files under {where.uri} for the date range")
    first = start or min(found.files)
    last = end or max(found.files)
    found.missing = [first + timedelta(days=i) for i in range((last - first).days + 1)
                     if first + timedelta(days=i) not in found.files]
    return found


def _check_feed_file(where: Location, path: str) -> None:
    """A feed file must be parquet with a text ``uri`` column: checked from its footer before
    anything is enqueued (one line naming the file otherwise)."""
    try:
        schema = pq.read_schema(path, filesystem=where.fs)
    except (OSError, pa.ArrowException) as exc:
        raise ConfigError(f"feed file {path} cannot be read as parquet ({exc}); fix or remove "
                          "it (nothing was enqueued)") from None
    if "uri" not in schema.names or not (pa.types.is_string(schema.field("uri").type)
                                         or pa.types.is_large_string(schema.field("uri").type)):
        found = f"its uri column is {schema.field('uri').type}" if "uri" in schema.names \
            else f"its columns: {', '.join(schema.names) or 'none'}"
        raise ConfigError(f"feed file {path} has no text uri column ({found}); feeds.path must "
                          "hold partition_date=YYYY-MM-DD/*.parquet files with a uri column "
                          "(nothing was enqueued)")


def posts_window(config: BackfillConfig, start: date | None) -> date | None:
    """The first posts day a feed range needs (its first day minus the look-back)."""
    if start is None:
        return config.feeds.earliest_date
    first = start - timedelta(days=config.feeds.lookback_days)
    earliest = config.feeds.earliest_date
    return max(first, earliest) if earliest else first


def served_posts(config: BackfillConfig, feeds: FeedDays, posts: PostFiles,
                 batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Per feed day, the look-back window's posts whose uri was served that day."""
    by_day: dict[date, list[str]] = {}
    for path in posts.good:
        if day := partition_day(path):
            by_day.setdefault(day, []).append(path)
    lookback, earliest = config.feeds.lookback_days, config.feeds.earliest_date
    for day in sorted(feeds.files):
        uris = pads.dataset(feeds.files[day], format="parquet",
                            filesystem=feeds.where.fs).to_table(columns=["uri"]).column("uri")
        served = pc.unique(pc.drop_null(uris.cast(pa.string())))
        window = [p for d in sorted(by_day) if day - timedelta(days=lookback) <= d <= day
                  and (earliest is None or d >= earliest) for p in by_day[d]]
        if not window or not len(served):
            continue
        dataset = pads.dataset(window, schema=READ_SCHEMA, format="parquet",
                               filesystem=posts.filesystem)
        for batch in dataset.to_batches(batch_size=batch_rows, use_threads=False):
            kept = batch.filter(pc.is_in(batch.column("uri"), value_set=served))
            if kept.num_rows:
                yield kept
