"""WriterActor: turns the result stream into fenced completions and parquet files.

Rows are grouped per (batch, lease); once every post of a batch has a result, the writer
completes it itself, on its own read-write connection to the queue file: ``complete`` checks
the lease and writes the output rows, retries and the removal in one ``BEGIN IMMEDIATE``
transaction, so a stale lease's results are discarded whoever holds the connection (the
fencing, not a single writer process, gives exactly-once). No QueueActor call per batch: the
QueueActor is told, in one unawaited call per block, which leases it need no longer
heartbeat. The output queue is exported to parquet, on the same connection, every
``export_rows`` completed rows or ``export_every_seconds``, and at the end.
"""
from __future__ import annotations

import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from queue_store import QueueStore, codec, export_output


class WriterActor:
    def __init__(self, queue: Any, data_dir: str, integration: str, out_dir: str,
                 export_rows: int, export_every_seconds: float, max_attempts: int) -> None:
        import ray

        self.queue = queue
        ray.get(queue.get_stats.remote())  # the QueueActor has created the queue file
        self.store = QueueStore(data_dir, integration, max_attempts=max_attempts)
        self.out_dir = out_dir
        self.export_rows = export_rows
        self.export_every_seconds = export_every_seconds
        self.open: dict[tuple[int, str], dict[str, Any]] = {}
        self.unexported_rows = 0
        self.last_export = time.monotonic()
        self.stats = {"result_rows": 0, "completed_batches": 0, "stale_batches": 0,
                      "labelled": 0, "failed": 0, "retried": 0, "dead_lettered": 0,
                      "export_dead_lettered": 0, "exported_rows": 0, "parquet_files": 0}
        self.provenance: dict[str, str] = {}
        self.label_counts: dict[str, int] = {}

    def consume(self, table: pa.Table, span: tuple[int, int] | None = None) -> None:
        """One result block (resolved from its object ref by Ray, in this process); ``span``
        is the part of it that belongs to this delivery."""
        if span is not None:
            table = table.slice(span[0], span[1] - span[0])
        if not table.num_rows:
            return
        self._tally(table)
        cols = {name: table.column(name).to_pylist()
                for name in ("batch_id", "lease_id", "batch_posts", "uri", "ok", "reason",
                             "columns_json")}
        self.stats["result_rows"] += table.num_rows
        ready = []
        for i in range(table.num_rows):
            key = (cols["batch_id"][i], cols["lease_id"][i])
            group = self.open.setdefault(key, {"expected": cols["batch_posts"][i],
                                               "succ": {}, "fail": {}})
            uri = cols["uri"][i]
            if cols["ok"][i]:  # forwarded still encoded: the queue merges it as text
                group["succ"][uri] = cols["columns_json"][i]
            else:
                group["fail"][uri] = cols["reason"][i]
            if len(group["succ"]) + len(group["fail"]) == group["expected"]:
                ready.append(key)
        for key in ready:
            group = self.open.pop(key)
            result = self.store.complete(key[0], key[1], group["succ"], group["fail"])
            if not result.accepted:  # the lease was lost (expired, reclaimed): discarded
                self.stats["stale_batches"] += 1
                continue
            self.stats["completed_batches"] += 1
            self.stats["labelled"] += result.labelled
            self.stats["failed"] += len(group["fail"])
            self.stats["retried"] += result.retried
            self.stats["dead_lettered"] += result.dead_lettered
            self.unexported_rows += result.labelled
        if ready:
            self.queue.forget.remote(ready)  # no longer heartbeated; not awaited
        if (self.unexported_rows >= self.export_rows
                or time.monotonic() - self.last_export >= self.export_every_seconds):
            self._export()

    def _tally(self, table: pa.Table) -> None:
        """Label distribution and provenance of the successful rows (counted as they arrive;
        a stale batch's rows, rare, are counted too)."""
        ok = table.filter(table.column("ok"))
        if not ok.num_rows:
            return
        if not self.provenance:
            first = codec.loads(ok.column("columns_json")[0].as_py())
            self.provenance = {"classifier": first.get("classifier", ""),
                               "model": first.get("model", "")}
        for item in pc.value_counts(ok.column("label")).to_pylist():
            if item["values"] is not None:
                key = item["values"]
                self.label_counts[key] = self.label_counts.get(key, 0) + item["counts"]

    def _export(self) -> None:
        stats = export_output(self.store, self.out_dir, self.export_rows)
        self.stats["exported_rows"] += stats.rows
        self.stats["parquet_files"] += stats.files
        self.stats["export_dead_lettered"] += stats.dead_lettered
        self.unexported_rows = 0
        self.last_export = time.monotonic()

    def get_stats(self) -> dict[str, Any]:
        return dict(self.stats, open_batches=len(self.open))

    def finish(self) -> dict[str, Any]:
        """Final export; batches still open here had results lost in flight (their leases
        expire and a later run redoes them)."""
        self._export()
        return dict(self.stats, incomplete_batches=len(self.open), provenance=self.provenance,
                    label_counts=self.label_counts)
