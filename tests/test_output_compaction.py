"""Compacting the parquet output: each partition's small files become files of a target size,
swapped in atomically. A SIGKILL at any step leaves exactly one full copy of every row
visible, the next compaction finishes the job, a concurrent reader never sees a row twice, and
a partition written to meanwhile loses nothing."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from queue_store import QueueBusyError
from tests.queue_helpers import NAME, Store, complete, complete_as_before, export_output, posts_of, spawn_queue_proc
from queue_store.compaction import HIDDEN, REPLACED, compact_output
from queue_store.location import Location
from tests.conftest import make_posts

POSTS = 3000


def _exported(tmp_path, n: int = POSTS, per_export: int = 250) -> tuple[Store, Path]:
    """``n`` posts over 3 days, labelled and exported in small chunks: many small files per
    partition."""
    store = Store(tmp_path, NAME)
    store.enqueue(make_posts(n), batch_size=125)
    out = tmp_path / "out"
    while batches := store.claim(max_batches=2):
        for b in batches:
            complete(store, b, {p["uri"]: {"label": "intergroup"} for p in posts_of(b)}, out=out)
        export_output(store, out, per_export)
    return store, out


def _rows(out: Path) -> list[str]:
    return pads.dataset(out, partitioning="hive").to_table(columns=["uri"]).column(
        "uri").to_pylist()


def _files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*.parquet") if not any(
        part.startswith(".") for part in p.relative_to(out).parts))


def test_small_files_become_few_and_every_row_stays_once(tmp_path):
    store, out = _exported(tmp_path)
    before = _files(out)
    stats = compact_output(store, Location.of(out), target_rows=600)
    after = _files(out)
    rows = _rows(out)
    assert len(rows) == len(set(rows)) == POSTS
    assert stats.files_before == len(before) > 30 and stats.files_after == len(after) == 6
    assert compact_output(store, Location.of(out), 600).partitions == 0  # idempotent
    assert not list(out.glob(HIDDEN + "*"))
    store.close()


@pytest.mark.parametrize("step", ["writing", "swapped", "deleting"])
def test_sigkill_at_each_step_leaves_one_copy_and_the_next_compaction_finishes(tmp_path,
                                                                              step):
    store, out = _exported(tmp_path)
    store.close()
    proc = spawn_queue_proc("compact_killed_at", str(tmp_path), str(out), step)
    assert proc.wait(120) == -9  # killed where it was told
    rows = _rows(out)  # what a reader sees right after the crash
    assert len(rows) == len(set(rows)) == POSTS, step
    store = Store(tmp_path, NAME)
    stats = compact_output(store, Location.of(out), 1000)
    rows = _rows(out)
    assert len(rows) == len(set(rows)) == POSTS and stats.leftovers_removed >= 1
    # No old copy is left; the partitions it replaced keep only their marker (for readers
    # that opened them just before the swap) until the next compaction.
    left = [f for f in out.glob(HIDDEN + "*/*") if f.name != REPLACED]
    assert len(_files(out)) == 3 and not left, left
    store.close()


def test_a_file_exported_into_a_partition_during_compaction_is_kept(tmp_path, monkeypatch):
    import queue_store.compaction as compaction

    store, out = _exported(tmp_path)
    late = make_posts(1, start=POSTS)[0]
    real = compaction.exchange
    done: list[Path] = []

    def export_then_exchange(hidden: Path, part: Path) -> None:
        if not done:  # a run exports a file into this partition right before the swap
            store.enqueue([dict(late, preprocessing_timestamp=f"{part.name[-10:]}-09:00:00")],
                          batch_size=1)
            [b] = store.claim()
            complete(store, b, {late["uri"]: {"label": "intergroup"}})
            export_output(store, out)
            done.append(part)
        real(hidden, part)

    monkeypatch.setattr(compaction, "exchange", export_then_exchange)
    compact_output(store, Location.of(out), 1000)
    rows = _rows(out)
    assert len(rows) == len(set(rows)) == POSTS + 1 and late["uri"] in rows
    store.close()


def test_a_reader_that_opened_a_partition_just_before_the_swap_finds_no_empty_partition(
        tmp_path, monkeypatch):
    """A listing of a partition's folder opened just before the swap and read after the old
    files went (as a reader stalled there would) names something that is not in the partition
    — the reader fails loudly and reads again — instead of an empty partition (it listed
    nothing before: that reader silently lost the partition's rows)."""
    import queue_store.compaction as compaction

    store, out = _exported(tmp_path)
    real, opened = compaction.exchange, []

    def open_then_exchange(hidden: Path, part: Path) -> None:
        opened.append((part, os.scandir(part)))  # the folder is opened here, read later
        real(hidden, part)

    monkeypatch.setattr(compaction, "exchange", open_then_exchange)
    compact_output(store, Location.of(out), 1000)
    for part, listing in opened:
        names = [e.name for e in listing if not e.name.startswith((".", "_"))]
        assert names, f"{part.name} listed empty"
        assert not [n for n in names if (part / n).exists()]  # opening any of them fails
    assert len(_rows(out)) == POSTS
    store.close()


def test_a_concurrent_reader_never_sees_a_row_twice_or_a_partition_missing(tmp_path):
    """A reader hammering the output while it is compacted three times: each read it
    completes holds every row once; a read that raced a swap fails loudly instead (once seen:
    a reader that opened a partition's folder just before the swap listed it empty after the
    old files went, and got 2,000 of the 3,000 rows without an error)."""
    store, out = _exported(tmp_path)
    reads: list[tuple[int, int]] = []  # (rows, distinct) of each completed read
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                rows = _rows(out)
            except (FileNotFoundError, OSError):
                continue  # a file gone between listing and reading: a loud, retryable miss
            reads.append((len(rows), len(set(rows))))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for target in (600, 1000, 2000):
            compact_output(store, Location.of(out), target)
    finally:
        stop.set()
        reader.join()
    assert reads and set(reads) == {(POSTS, POSTS)}, sorted(set(reads))
    store.close()


def test_refused_while_leased_or_an_export_is_unfinished_and_for_object_stores(tmp_path):
    store, out = _exported(tmp_path)
    store.enqueue(make_posts(10, start=POSTS), batch_size=10)
    [held] = store.claim()
    with pytest.raises(QueueBusyError, match="leased by a run"):
        compact_output(store, Location.of(out), 1000)
    complete(store, held, {p["uri"]: {"label": "intergroup"} for p in posts_of(held)})
    with pytest.raises(QueueBusyError, match="not published"):  # recorded, not yet moved
        compact_output(store, Location.of(out), 1000)
    export_output(store, out)  # publishes it
    store.enqueue(make_posts(10, start=POSTS + 10), batch_size=10)
    [old] = store.claim()  # output rows of an older queue file, and its crashed export
    complete_as_before(store, old, {p["uri"]: {"label": "intergroup"} for p in posts_of(old)})
    store.plan_export(1000)  # planned, never written
    with pytest.raises(QueueBusyError, match="unfinished"):
        compact_output(store, Location.of(out), 1000)
    export_output(store, out)  # finishes it
    assert compact_output(store, Location.of(out), 1000).rows == POSTS + 20
    with pytest.raises(ValueError, match="needs a local folder"):
        compact_output(store, Location.of("s3://bucket/out"), 1000)
    store.close()


def test_compact_output_verb_finishes_exports_then_compacts(tmp_path, capsys):
    from jobs.backfill import main
    from tests.cli_helpers import write_config
    from tests.pipeline_helpers import PLUGIN

    cfg = write_config(tmp_path, {"type": PLUGIN})
    store, out = _exported(tmp_path / "data")
    store.enqueue(make_posts(10, start=POSTS), batch_size=10)
    [b] = store.claim()
    complete(store, b, {p["uri"]: {"label": "intergroup"} for p in posts_of(b)},
             out=out)  # recorded, not published
    store.close()
    (tmp_path / "data" / "out").rename(tmp_path / "data" / NAME)  # where output_dir puts it
    assert main(["--config", str(cfg), "--compact-output", "all"]) == 0
    said = capsys.readouterr().out
    assert f"{NAME}: 3 partition(s) compacted" in said and f"({POSTS + 10:,} rows)" in said
    rows = _rows(tmp_path / "data" / NAME)
    assert len(rows) == len(set(rows)) == POSTS + 10


def test_a_label_column_that_appears_part_way_keeps_its_values_through_compaction(tmp_path):
    """A plugin adds a field part-way through a backfill: the files written before lack the
    column. The output reader sees it (null in the old rows), compaction keeps every value
    and leaves every file with every column, so a plain pyarrow reader sees it too."""
    store = Store(tmp_path, NAME)
    store.enqueue(make_posts(1500, days=1), batch_size=125)
    out = tmp_path / "out"
    for round_, extra in enumerate((False, True, True)):
        for b in store.claim(max_batches=4):
            complete(store, b, {p["uri"]: {"label": "intergroup",
                                           **({"score": 0.5} if extra else {})}
                                for p in posts_of(b)})
        export_output(store, out, 250)
    expected = 1000  # the last two rounds' posts
    assert Location.of(out).dataset().to_table().column("score").null_count == 1500 - expected
    stats = compact_output(store, Location.of(out), target_rows=600)
    assert stats.partitions == 1
    table = pads.dataset(out, partitioning="hive").to_table()  # a plain reader
    assert table.num_rows == 1500 and len(set(table.column("uri").to_pylist())) == 1500
    assert table.column("score").drop_null().to_pylist() == [0.5] * expected
    schemas = {pads.dataset(f).schema.remove_metadata() for f in _files(out)}
    assert len(schemas) == 1
    store.close()
