"""Helpers run in separate OS processes by the queue-store failure tests."""
from __future__ import annotations

import json
import os
import sys
import time

from tests.queue_helpers import Store

NAME = "ml_inference_intergroup"


def claim_until_empty(data_dir: str, owner: str, out_path: str, gate: str) -> None:
    store = Store(data_dir, NAME)
    got: list[int] = []
    while not os.path.exists(gate):  # start together, so claims really interleave
        time.sleep(0.01)
    while True:
        batches = store.claim(max_batches=1 + len(got) % 3, lease_seconds=600, owner=owner)
        if not batches:
            break
        got.extend(b.batch_id for b in batches)
        time.sleep(0.002)
    with open(out_path, "w") as fh:
        json.dump(got, fh)


def enqueue_range(data_dir: str, start: str, stop: str, gate: str, out_path: str) -> None:
    """Enqueue posts start..stop in small pieces, racing the other enqueuers."""
    from tests.conftest import make_posts

    store = Store(data_dir, NAME)
    while not os.path.exists(gate):
        time.sleep(0.01)
    enqueued = 0
    for lo in range(int(start), int(stop), 50):
        enqueued += store.enqueue(make_posts(min(50, int(stop) - lo), start=lo),
                                  batch_size=20).enqueued_posts
    with open(out_path, "w") as fh:
        json.dump(enqueued, fh)


def claim_as_this_process(data_dir: str, leases_path: str) -> None:
    """Claim with this process as the recorded holder, report, then exit (the holder dies)."""
    from queue_store.lease_holder import LeaseHolder

    store = Store(data_dir, NAME)
    batches = store.claim(max_batches=3, lease_seconds=3600,
                          owner=LeaseHolder.this_process("doomed-run").encode())
    with open(leases_path, "w") as fh:
        json.dump([b.batch_id for b in batches], fh)


def claim_and_hang(data_dir: str, leases_path: str) -> None:
    store = Store(data_dir, NAME)
    batches = store.claim(max_batches=3, lease_seconds=1, owner="doomed")
    with open(leases_path + ".tmp", "w") as fh:
        json.dump([b.model_dump(mode="json") for b in batches], fh)
    os.replace(leases_path + ".tmp", leases_path)
    time.sleep(600)


def compact_full(data_dir: str, started_path: str) -> None:
    """Rewrite the queue file (VACUUM), saying when it starts: the test kills it mid-way."""
    store = Store(data_dir, NAME)
    with open(started_path, "w") as fh:
        fh.write("1")
    store.compact(full=True)


def export_killed_mid_upload(data_dir: str, out_uri: str, endpoint: str, die_at: str,
                             ready_path: str) -> None:
    """Export to an object store, and on the ``die_at``-th file upload only half of it, say
    so, and wait to be SIGKILLed (the upload never completes)."""
    import pyarrow as pa

    import queue_store.location as location
    from tests.queue_helpers import export_output
    from queue_store.location import Location, ObjectStore

    real, calls = location.pq.write_table, [0]

    def half_then_wait(table, where, filesystem=None, **kwargs):
        calls[0] += 1
        if calls[0] < int(die_at):
            return real(table, where, filesystem=filesystem, **kwargs)
        buf = pa.BufferOutputStream()
        real(table, buf, **kwargs)
        data = buf.getvalue()
        stream = filesystem.open_output_stream(where)
        stream.write(data[: len(data) // 2])
        with open(ready_path, "w") as fh:
            fh.write(where)
        time.sleep(600)

    location.pq.write_table = half_then_wait
    store = Store(data_dir, NAME)
    export_output(store, Location.of(out_uri, ObjectStore(endpoint_url=endpoint)), 1000)


def adopt_killed_at(data_dir: str, from_hash: str, config_hash: str, batch_no: str) -> None:
    """``adopt`` from_hash's batches for config_hash, SIGKILLed as it comes to its
    ``batch_no``-th batch, inside the transaction (past a page, the page's ledger run file
    is written but not yet named by a commit)."""
    import signal

    from queue_store.lease import LeaseCore

    real, seen = LeaseCore._adopt_batch, [0]

    def dying(self, *args, **kwargs):
        seen[0] += 1
        if seen[0] == int(batch_no):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, *args, **kwargs)

    LeaseCore._adopt_batch = dying
    Store(data_dir, NAME).adopt(from_hash, config_hash)


def compact_killed_at(data_dir: str, out_dir: str, step: str) -> None:
    """Compact the output and SIGKILL this process at ``step``: ``writing`` (one new file
    written), ``swapped`` (new files visible, old ones hidden), ``deleting`` (some old files
    deleted)."""
    import signal

    import queue_store.compaction as compaction
    from queue_store.location import Location

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if step == "writing":
        real_writer = compaction.pq.ParquetWriter

        class DyingWriter(real_writer):
            def close(self) -> None:
                super().close()
                die()

        compaction.pq.ParquetWriter = DyingWriter
    elif step == "swapped":
        real_exchange = compaction.exchange

        def exchange_then_die(a, b):
            real_exchange(a, b)
            die()

        compaction.exchange = exchange_then_die
    else:
        def retire_part_way(folder):
            victims = sorted(os.listdir(folder))
            os.remove(os.path.join(folder, victims[0]))
            die()

        compaction._retire = retire_part_way
    store = Store(data_dir, NAME)
    compaction.compact_output(store, Location.of(out_dir), 1000)


def label_killed_at(data_dir: str, out_uri: str, endpoint: str, config_hash: str,
                    step: str) -> None:
    """Label every queued batch as the WriterActor does — claim, stage the claim's labelled
    rows, complete (acks and the file's record, one transaction), publish — and SIGKILL this
    process at ``step`` of the second claim: ``staged`` (its file written, not committed),
    ``committed`` (recorded, not published), ``mid-publish`` (one of its day files moved,
    the rest not, nothing marked) or ``mid-upload`` (its staged upload half sent)."""
    import signal

    import pyarrow as pa

    import queue_store.location as location
    import queue_store.staging as staging
    from queue_store import codec, export_output
    from queue_store.lease_holder import LeaseHolder
    from queue_store.location import Location, ObjectStore
    from queue_store.models import Ack

    def die(*_: object, **__: object) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    out = Location.of(out_uri, ObjectStore(endpoint_url=endpoint or None))
    store = Store(data_dir, NAME)
    owner = LeaseHolder.this_process("killed-run")
    claims = 0
    while batches := store.claim(max_batches=2, lease_seconds=3600, owner=owner.encode(),
                                 config_hash=config_hash):
        claims += 1
        dying = claims == 2
        tables = [codec.loads_posts(b.payload) for b in batches]
        tables = [pa.Table.from_batches([t]) for t in tables]
        rows = [t.append_column("label", pa.array(["x"] * t.num_rows)) for t in tables]
        if dying and step == "mid-upload":
            real = location.pq.write_table

            def half_then_die(table, where, filesystem=None, **kwargs):
                buf = pa.BufferOutputStream()
                real(table, buf, **kwargs)
                stream = filesystem.open_output_stream(where)  # held open: never completed
                stream.write(buf.getvalue()[:1000])
                die()
            location.pq.write_table = half_then_die
        acks = [Ack(batch_id=b.batch_id, lease_id=b.lease_id, labelled=t.num_rows)
                for b, t in zip(batches, tables)]
        staged, _ = staging.stage(store, out, owner.run_id, acks, rows)
        if dying and step == "staged":
            die()
        store.complete(acks, staged)
        if dying and step == "committed":
            die()
        if dying and step == "mid-publish":
            real_move, moved = staging._move, [0]

            def move_then_die(*args: object) -> None:
                if moved[0]:
                    die()
                moved[0] += 1
                real_move(*args)
            staging._move = move_then_die
        export_output(store, out, 1000)


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
