"""Stream input posts from ``<path>/partition_date=YYYY-MM-DD/*.parquet`` in bounded batches.

Before anything is enqueued every selected file's footer is read (cheap: no data pages), so a
corrupt, empty or non-parquet file stops the stage up front instead of half-way. Files whose
names do not end in ``.parquet``, and dot/underscore files and folders, are ignored as Spark
and pyarrow do. A readable file that lacks a required column, or holds it with a non-string
type, has its posts rejected with that reason (counted, not silently emptied).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import Iterator

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from jobs.config import ConfigError
from queue_store.location import Location
from queue_store.rows.validation import POST_COLUMNS, is_text_type

READ_SCHEMA = pa.schema([(c, pa.string()) for c in POST_COLUMNS])
_DAY = re.compile(r"(?:^|/)partition_date=([^/]+)/")
SHOW_BAD_FILES = 3


@dataclass
class PostFiles:
    """The files a date range selects, sorted into readable, unusable and broken ones."""

    filesystem: pafs.FileSystem
    base: str
    good: list[str] = field(default_factory=list)
    # (file, rows, reason) for readable files whose posts are all rejected
    rejected: list[tuple[str, int, str]] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)  # (file, error)
    good_rows: int = 0  # rows in the good files, from their footers
    # the first and last partition_date=… day of every posts file under ``base`` (any range)
    first_day: date | None = None
    last_day: date | None = None

    def bad_files_message(self) -> str:
        shown = "; ".join(f"{f}: {e}" for f, e in self.bad[:SHOW_BAD_FILES])
        more = f" (and {len(self.bad) - SHOW_BAD_FILES} more)" if len(self.bad) > 3 else ""
        return (f"{len(self.bad)} posts file(s) under {self.base} cannot be read as parquet: "
                f"{shown}{more}; fix or remove them, or pass --skip-bad-files to enqueue the rest")


def _ignored(relative: str) -> bool:
    parts = relative.split("/")
    return (not parts[-1].endswith(".parquet")
            or any(p.startswith((".", "_")) for p in parts))


def partition_day(path: str) -> date | None:
    """The day of a file's ``partition_date=YYYY-MM-DD`` folder (None: none, or not a date)."""
    m = _DAY.search(path)
    try:
        return date.fromisoformat(m.group(1)) if m else None
    except ValueError:
        return None


def _in_range(relative: str, start: date | None, end: date | None) -> bool:
    m = _DAY.search(relative)
    if m is None:
        return start is None and end is None
    day = m.group(1)
    return (start is None or day >= start.isoformat()) and (end is None or day <= end.isoformat())


def _column_problem(schema: pa.Schema) -> str | None:
    for name in POST_COLUMNS:
        if name not in schema.names:
            return f"missing column {name}"
        if not is_text_type(schema.field(name).type):
            return f"{'timestamp' if name == 'preprocessing_timestamp' else name} is not a string"
    return None


def find_post_files(path: str | Location, start: date | None, end: date | None) -> PostFiles:
    """List the selected files and read each one's footer (a local folder or any pyarrow URI:
    ``BackfillConfig.location`` adds the object store's endpoint)."""
    try:
        where = path if isinstance(path, Location) else Location.of(path)
        path = where.uri
        fs, base = where.fs, where.path
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    except (FileNotFoundError, OSError, pa.ArrowInvalid) as exc:
        raise ConfigError(f"posts path {path!r} cannot be read ({exc}); set posts.path in the "
                          "config to a folder of partition_date=YYYY-MM-DD/*.parquet") from None
    found = PostFiles(fs, base)
    prefix = base.rstrip("/") + "/"
    for info in sorted(infos, key=lambda i: i.path):
        relative = info.path[len(prefix):] if info.path.startswith(prefix) else info.base_name
        if info.type != pafs.FileType.File or _ignored(relative):
            continue
        day = partition_day(relative)
        if day is not None:
            found.first_day = min(found.first_day or day, day)
            found.last_day = max(found.last_day or day, day)
        if not _in_range(relative, start, end):
            continue
        try:
            with fs.open_input_file(info.path) as fh:
                meta = pq.ParquetFile(fh).metadata
                schema = meta.schema.to_arrow_schema()
        except (OSError, pa.ArrowException) as exc:
            found.bad.append((info.path, str(exc).splitlines()[0][:200] or type(exc).__name__))
            continue
        problem = _column_problem(schema)
        if problem:
            found.rejected.append((info.path, meta.num_rows, problem))
        else:
            found.good.append(info.path)
            found.good_rows += meta.num_rows
    return found


def iter_posts(files: PostFiles, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The good files' posts in bounded record batches (the date range chose the files)."""
    if not files.good:
        return
    dataset = pads.dataset(files.good, schema=READ_SCHEMA, format="parquet",
                           filesystem=files.filesystem)
    # No readahead, no threaded decode: threaded scans decode far ahead (measured ~140 MB
    # held for 10k-row batches); one thread keeps the reader at ~12 MB.
    scanner = dataset.scanner(columns=list(POST_COLUMNS), batch_size=batch_rows,
                              batch_readahead=1, fragment_readahead=1, use_threads=False)
    for batch in scanner.to_batches():
        if batch.num_rows:
            yield batch
