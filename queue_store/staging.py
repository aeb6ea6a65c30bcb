"""Labels straight to parquet: a completion's rows staged, recorded, then published.

1. ``stage(store, out, run_id, acks, tables)`` writes the labelled rows of a completion once, one
   parquet file per post day, under ``<output>/.staging/<integration>/<run_id>/`` — on the
   output's own filesystem (a local folder or an object store), beside the integration's
   dataset and outside it: no reader of ``<output>/<integration>`` (pyarrow, DuckDB's
   ``**/*.parquet`` globs) sees a staged file.
2. ``QueueStore.complete(acks, output)`` records the staged files in the transaction that
   acks their batches: from then on they are the labels of those posts, and only then.
3. ``publish(store, out)`` moves each recorded file to
   ``<out>/partition_date=<day>/<stem>.parquet`` (a rename in a local folder, a server-side
   copy then delete in an object store; either way the final name appears whole) and marks
   it published. A crash part-way leaves it recorded: the next publish moves what is left
   (a file already at its final name and gone from staging counts as moved), so publishing
   is idempotent and every row is visible once.
4. ``collect_garbage(store, out)`` deletes staged files no committed transaction names, of
   runs that hold no lease (a crash between staging and the commit; a commit fenced out):
   no commit can name them any more. The files are listed first, then the leases and
   records are read in one snapshot: a file listed was staged for batches its run leased,
   so if that run holds no lease now, the file's commit either happened (it is recorded)
   or can only be fenced out.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel

from queue_store.location import Location, is_uri
from queue_store.models import Ack, StagedOutput
from queue_store.rows.column_types import concat_conformed, conform, strings_for_nulls
from queue_store.store import QueueStore

STAGING = ".staging"


def staging_root(out: Location) -> Location:
    """Where the labelled files of ``out`` (``<output>/<integration>``) are staged:
    ``<output>/.staging/<integration>``."""
    path, _, name = out.path.rstrip("/").rpartition("/")
    uri = out.uri.rstrip("/").rpartition("/")[0]
    return Location(out.fs, f"{path}/{STAGING}/{name}", f"{uri}/{STAGING}/{name}")


class PublishStats(BaseModel):
    files: int = 0
    rows: int = 0


class StagedFileMissing(FileNotFoundError):
    """A recorded file is neither staged nor at its final name: its labels are gone."""


def by_post_day(rows: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    """``(YYYY-MM-DD, rows of that day)`` by the post's own date, in date order (the
    output's partitions)."""
    # Both accepted timestamp forms start with YYYY-MM-DD.
    day = pc.utf8_slice_codeunits(rows.column("preprocessing_timestamp"), 0, 10)
    for date in sorted(pc.unique(day).to_pylist()):
        yield date, rows.filter(pc.equal(day, date))


def stage(store: QueueStore, out: Location, run_id: str, acks: list[Ack],
          tables: list[pa.Table]) -> tuple[StagedOutput, pa.Schema]:
    """Write the labelled rows of the completion of ``acks`` (typed output rows, the post's
    fields first) as one staged parquet file per post day, named by its lease and first
    batch, in the output's fixed column types (a column no value has typed yet is fixed as
    text, as the files need a type). Returns what ``QueueStore.complete`` records and the
    column types now fixed."""
    schema = store.export_schema()
    rows = strings_for_nulls(conform(concat_conformed(tables), schema, lenient=True))
    if rows.schema != schema:
        schema = store.save_export_schema(rows.schema)
        rows = conform(rows, schema, lenient=True)
    stem = f"part-{store.store_id}-{acks[0].lease_id[:16]}-{acks[0].batch_id}"
    root, files = staging_root(out), {}
    for date, part in by_post_day(rows):
        relative = f"{run_id}/.{stem}.{date}.parquet"
        root.write_parquet(relative, part)
        files[date] = root.child(relative).uri
    return StagedOutput(stem=stem, files=files, rows=rows.num_rows), schema


def discard(out: Location, staged: StagedOutput) -> None:
    """Delete the staged files of a completion that was not committed."""
    for where in staged.files.values():
        fs, path = _source(out, where)
        try:
            fs.delete_file(path)
        except FileNotFoundError:
            pass


def staged_uris(out: Location) -> Callable[[StagedOutput], pa.Array]:
    """Reads the uris of a recorded file's posts (``QueueStore.clear_output`` forgets them)."""
    def read(staged: StagedOutput) -> pa.Array:
        parts = []
        for where in staged.files.values():
            fs, path = _source(out, where)
            if fs.get_file_info(path).type == pafs.FileType.NotFound:  # published meanwhile
                continue
            parts.append(pq.read_table(path, columns=["uri"], filesystem=fs).column("uri"))
        return pa.chunked_array(parts, pa.string()).combine_chunks()
    return read


def publish(store: QueueStore, out: Location) -> PublishStats:
    """Move every recorded, unpublished file to its final name under ``out``."""
    stats = PublishStats()
    while records := store.staged():
        for record in records:
            for date, where in record.output.files.items():
                _move(out, where, f"partition_date={date}/{record.output.stem}.parquet")
                stats.files += 1
            stats.rows += record.output.rows
        store.mark_published([r.id for r in records])
    return stats


def collect_garbage(store: QueueStore, out: Location, keep: str | None = None) -> int:
    """Delete staged files that no commit names and none can (their run holds no lease),
    except under run ``keep`` (the caller's own); returns how many."""
    root = staging_root(out)
    try:
        listed = [i for i in out.fs.get_file_info(pafs.FileSelector(root.path, recursive=True,
                                                                    allow_not_found=True))
                  if i.type == pafs.FileType.File]
    except FileNotFoundError:
        return 0
    live, recorded = store.staging_owners()  # after the listing: see the module's docstring
    removed = 0
    for info in listed:
        relative = info.path[len(root.path) + 1:]
        run = relative.split("/", 1)[0]
        if run == keep or run in live or root.child(relative).uri in recorded:
            continue
        try:
            out.fs.delete_file(info.path)
            removed += 1
        except FileNotFoundError:
            pass
    if out.local:  # empty run folders (an object store has none)
        for folder in Path(root.path).glob("*"):
            if folder.name != keep and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    return removed


def _source(out: Location, where: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of a staged file, from its recorded path or URI; one
    recorded under another output folder that is gone (moved or renamed since, with its
    staging folder) is looked for in ``out``'s staging folder."""
    root = staging_root(out)
    base = root.uri.rstrip("/") + "/"
    if where.startswith(base):
        return out.fs, f"{root.path}/{where[len(base):]}"
    if not is_uri(where) and os.path.exists(where):
        return pafs.LocalFileSystem(), where
    parts = where.rsplit("/", 3)  # …/.staging/<integration>/<run>/<file>
    if len(parts) < 4 or not parts[0].endswith(f"/{STAGING}"):
        raise ValueError(f"{where} is not a staged labelled file")
    return out.fs, f"{root.path}/{parts[2]}/{parts[3]}"


def _move(out: Location, where: str, relative: str) -> None:
    """Move a staged file to ``relative`` under ``out``; done already if it is gone from
    staging and at its final name."""
    fs, path = _source(out, where)
    target = out.child(relative)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        if target.exists():
            return  # moved before a crash that came ahead of the mark
        raise StagedFileMissing(f"the labelled file {where} recorded in the queue file is "
                                f"neither staged nor at {target}")
    if out.local and isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(target.path), exist_ok=True)
        try:
            os.replace(path, target.path)
        except OSError as exc:
            if exc.errno != 18:  # EXDEV: staged on another local filesystem
                raise
            tmp = f"{os.path.dirname(target.path)}/.tmp-{os.getpid()}-{Path(path).name}"
            shutil.copyfile(path, tmp)
            os.replace(tmp, target.path)
            os.unlink(path)
        return
    if fs is out.fs:
        out.fs.move(path, target.path)  # an object store: a server-side copy, then a delete
        return
    pafs.copy_files(path, target.path, source_filesystem=fs, destination_filesystem=out.fs)
    fs.delete_file(path)
