"""WriterActor: turns the result stream into fenced completions and parquet files.

Rows are grouped per (batch, lease); once every post of a batch has a result, one fenced
``complete`` goes to the QueueActor. The output queue is exported to parquet every
``export_rows`` completed rows or ``export_every_seconds``, and at the end.
"""
from __future__ import annotations

import time
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from queue_store import QueueStore, codec, export_output
from queue_store.models import ExportPlan


MAX_UNSETTLED = 16  # completions in flight to the QueueActor before waiting for answers


class QueueActorExportSource:
    """``export_output``'s source: bookkeeping writes go through the QueueActor (the queue's
    only writer); the rows are read here over a read-only connection, so they are never
    pickled across processes."""

    def __init__(self, queue: Any, reader: QueueStore) -> None:
        self.queue = queue
        self.reader = reader

    def plan_export(self, max_rows: int) -> ExportPlan | None:
        import ray

        return ray.get(self.queue.plan_export.remote(max_rows))

    def export_payloads(self, export_id: int) -> Iterator[str]:
        return self.reader.export_payloads(export_id)

    def export_rows(self, export_id: int) -> Iterator[tuple[int, str]]:
        return self.reader.export_rows(export_id)

    def export_schema(self) -> pa.Schema | None:
        return self.reader.export_schema()

    def save_export_schema(self, schema: pa.Schema) -> None:
        import ray

        ray.get(self.queue.save_export_schema.remote(schema))

    def bury_export_lines(self, bad: list[tuple[int, int, str]]) -> int:
        import ray

        return ray.get(self.queue.bury_export_lines.remote(bad))

    def mark_exported(self, export_id: int) -> None:
        import ray

        ray.get(self.queue.mark_exported.remote(export_id))


class WriterActor:
    def __init__(self, queue: Any, data_dir: str, integration: str, out_dir: str,
                 export_rows: int, export_every_seconds: float) -> None:
        import ray

        self.queue = queue
        # The QueueActor creates the queue file; a read-only connection cannot, so wait for it.
        ray.get(queue.get_stats.remote())
        self.source = QueueActorExportSource(queue, QueueStore(data_dir, integration,
                                                               readonly=True))
        self.out_dir = out_dir
        self.export_rows = export_rows
        self.export_every_seconds = export_every_seconds
        self.open: dict[tuple[int, str], dict[str, Any]] = {}
        self.completing: list[Any] = []
        self.unexported_rows = 0
        self.last_export = time.monotonic()
        self.stats = {"result_rows": 0, "completed_batches": 0, "stale_batches": 0,
                      "exported_rows": 0, "parquet_files": 0}
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
            # Not awaited here: the QueueActor runs this caller's calls in order, and
            # _settle() collects the answers before any export or the end of the run.
            self.completing.append(self.queue.complete.remote(key[0], key[1], group["succ"],
                                                              group["fail"]))
            self.unexported_rows += len(group["succ"])
        if len(self.completing) >= MAX_UNSETTLED:
            self._settle()
        if (self.unexported_rows >= self.export_rows
                or time.monotonic() - self.last_export >= self.export_every_seconds):
            self._export()

    def _settle(self) -> None:
        import ray

        pending, self.completing = self.completing, []
        for res in ray.get(pending):
            if res["accepted"]:
                self.stats["completed_batches"] += 1
            else:
                self.stats["stale_batches"] += 1

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
        self._settle()
        stats = export_output(self.source, self.out_dir, self.export_rows)
        self.stats["exported_rows"] += stats.rows
        self.stats["parquet_files"] += stats.files
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
