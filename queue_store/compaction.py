"""Compaction of an integration's parquet output: each partition's small files (one per export
and day) rewritten into files of about ``target_rows`` rows, swapped in atomically.

For a partition folder ``partition_date=D`` the new files are written (and fsynced) into a
hidden sibling folder, which dataset readers ignore; then the two folders are exchanged with one
``renameat2(RENAME_EXCHANGE)`` — a reader lists either all the old files or all the new ones,
never both and never neither — and the old files, now in the hidden folder, are deleted. A
reader that opened the partition's folder just before the exchange lists the hidden one: a
``REPLACED`` marker is put there before any old file goes, so such a reader finds a name that
is not in the partition and fails loudly (``FileNotFoundError``; read again) instead of seeing
the partition empty. The emptied folder, holding only its marker, stays until the next
compaction, which deletes it with whatever a crash left hidden. A crash at any step leaves one
complete set visible. A file that an export wrote into the partition after it was read (a run
started meanwhile) is moved back, never deleted. Rows are copied as they are (``config_hash`` and
every column kept), so versions stay apart. The new files carry every column of the whole
output (a label column that appeared part-way through a backfill: null where a row had none),
and a partition whose files lack one is rewritten too, so after a compaction every file has
the same columns and any parquet reader sees them all.

Local folders only: an object store has no atomic exchange of a set of objects.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pydantic import BaseModel

from queue_store.location import Location, unified_schema
from queue_store.schema import QueueBusyError
from queue_store.store import QueueStore

HIDDEN = ".compact-"  # new files being written, old ones being deleted, or a REPLACED marker
REPLACED = "replaced-by-compaction"  # left in a replaced partition's folder (see above)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


class CompactOutputStats(BaseModel):
    partitions: int = 0      # partitions rewritten
    files_before: int = 0    # in those partitions
    files_after: int = 0
    rows: int = 0
    leftovers_removed: int = 0  # hidden folders an earlier compaction or crash left


def exchange(a: Path, b: Path) -> None:
    """Swap two folders atomically (Linux ``renameat2`` with ``RENAME_EXCHANGE``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        raise OSError("this system has no renameat2 (needed for an atomic swap of a partition)")
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def compact_output(store: QueueStore, out: Location, target_rows: int) -> CompactOutputStats:
    """Rewrite every partition of ``out`` holding more files than its rows need; refused
    (``QueueBusyError``) while a run holds leases or an export is unfinished."""
    if not out.local:
        raise ValueError(f"output {out} is in an object store: compaction needs a local folder "
                         "(an object store cannot swap a set of objects atomically)")
    busy = store.busy_exporting()
    if busy:
        raise QueueBusyError(f"queue file {store.path}: {busy}; compact the output once no run "
                             "is working on it")
    stats = CompactOutputStats()
    root = Path(out.path)
    if not root.is_dir():
        return stats
    for leftover in root.glob(HIDDEN + "*"):
        shutil.rmtree(leftover, ignore_errors=True)
        stats.leftovers_removed += 1
    parts = {part: _visible(part) for part in sorted(root.glob("partition_date=*"))}
    footers = {f: pq.read_metadata(f) for files in parts.values() for f in files}
    schema = unified_schema(m.schema.to_arrow_schema() for m in footers.values())
    for part, files in parts.items():
        rows = sum(footers[f].num_rows for f in files)
        if len(files) <= max(1, -(-rows // target_rows)) and all(
                footers[f].schema.to_arrow_schema().equals(schema) for f in files):
            continue  # already as few files as its rows need, with every column
        hidden = root / f"{HIDDEN}{part.name}-{uuid.uuid4().hex[:8]}"
        written = _rewrite(files, hidden, store.store_id, target_rows, schema)
        exchange(hidden, part)  # the new files visible, the old ones hidden: one step
        _fsync_dir(root)
        late = [f for f in _visible(hidden) if f.name not in {x.name for x in files}]
        for f in late:  # exported after we listed the partition: keep it
            os.replace(f, part / f.name)
        _retire(hidden)
        stats.partitions += 1
        stats.files_before += len(files)
        stats.files_after += written + len(late)
        stats.rows += rows
    return stats


def _retire(folder: Path) -> None:
    """Delete a swapped-out partition's old files, its ``REPLACED`` marker put there first."""
    (folder / REPLACED).touch()
    for f in _visible(folder):
        f.unlink()


def _visible(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.suffix == ".parquet"
                  and not f.name.startswith((".", "_")))


def _rewrite(files: list[Path], into: Path, store_id: str, target_rows: int,
             schema: pa.Schema) -> int:
    """Stream ``files`` into new files of ``target_rows`` rows with the columns of ``schema``
    in ``into``; returns how many."""
    into.mkdir()
    dataset = pads.dataset([str(f) for f in files], format="parquet", schema=schema)
    stem = f"compact-{store_id}-{uuid.uuid4().hex[:8]}"
    count, writer, in_file = 0, None, 0
    try:
        for batch in dataset.to_batches(batch_size=min(target_rows, 65_536)):
            while batch.num_rows:
                if writer is None:
                    writer = pq.ParquetWriter(into / f"{stem}-{count:04d}.parquet",
                                              dataset.schema, compression="zstd")
                    count, in_file = count + 1, 0
                take = batch.slice(0, target_rows - in_file)
                writer.write_batch(take)
                in_file += take.num_rows
                batch = batch.slice(take.num_rows)
                if in_file >= target_rows:
                    writer.close()
                    writer = None
    finally:
        if writer is not None:
            writer.close()
    for f in into.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(into)
    return count


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
