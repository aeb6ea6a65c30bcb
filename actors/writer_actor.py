"""WriterActor: turns the result stream into fenced completions and parquet files.

Rows are grouped per (batch, lease); once every post of a batch has a result, one fenced
``complete`` goes to the QueueActor. The output queue is exported to parquet every
``export_rows`` completed rows or ``export_every_seconds``, and at the end.
"""
from __future__ import annotations

import time
from typing import Any

import pyarrow as pa

from queue_store import codec, export_output
from queue_store.models import ExportPlan


class QueueActorExportSource:
    """Adapts the QueueActor handle to ``export_output``'s source protocol."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def plan_export(self, max_rows: int) -> ExportPlan | None:
        import ray

        return ray.get(self.queue.plan_export.remote(max_rows))

    def export_rows(self, export_id: int) -> list[list[dict]]:
        import ray

        return ray.get(self.queue.export_rows.remote(export_id))

    def mark_exported(self, export_id: int) -> None:
        import ray

        ray.get(self.queue.mark_exported.remote(export_id))


class WriterActor:
    def __init__(self, queue: Any, out_dir: str, export_rows: int,
                 export_every_seconds: float) -> None:
        self.queue = queue
        self.source = QueueActorExportSource(queue)
        self.out_dir = out_dir
        self.export_rows = export_rows
        self.export_every_seconds = export_every_seconds
        self.open: dict[tuple[int, str], dict[str, Any]] = {}
        self.unexported_rows = 0
        self.last_export = time.monotonic()
        self.stats = {"result_rows": 0, "completed_batches": 0, "stale_batches": 0,
                      "exported_rows": 0, "parquet_files": 0}
        self.provenance: dict[str, str] = {}
        self.label_counts: dict[str, int] = {}

    def consume(self, table: pa.Table) -> None:
        import ray

        cols = {name: table.column(name).to_pylist() for name in table.column_names}
        self.stats["result_rows"] += table.num_rows
        ready = []
        for i in range(table.num_rows):
            key = (cols["batch_id"][i], cols["lease_id"][i])
            group = self.open.setdefault(key, {"expected": cols["batch_posts"][i],
                                               "succ": {}, "fail": {}})
            uri = cols["uri"][i]
            if cols["ok"][i]:
                group["succ"][uri] = codec.loads(cols["columns_json"][i])
            else:
                group["fail"][uri] = cols["reason"][i]
            if len(group["succ"]) + len(group["fail"]) == group["expected"]:
                ready.append(key)
        for key in ready:
            group = self.open.pop(key)
            res = ray.get(self.queue.complete.remote(key[0], key[1], group["succ"], group["fail"]))
            if res["accepted"]:
                self.stats["completed_batches"] += 1
                self.unexported_rows += res["labelled"]
                self._tally(group["succ"].values())
            else:
                self.stats["stale_batches"] += 1
        if (self.unexported_rows >= self.export_rows
                or time.monotonic() - self.last_export >= self.export_every_seconds):
            self._export()

    def _tally(self, rows: Any) -> None:
        for row in rows:
            if not self.provenance:
                self.provenance = {"classifier": row.get("classifier", ""),
                                   "model": row.get("model", "")}
            if "label" in row:
                key = str(row["label"])
                self.label_counts[key] = self.label_counts.get(key, 0) + 1

    def _export(self) -> None:
        stats = export_output(self.source, self.out_dir, self.export_rows)
        self.stats["exported_rows"] += stats.rows
        self.stats["parquet_files"] += stats.files
        self.unexported_rows = 0
        self.last_export = time.monotonic()

    def finish(self) -> dict[str, Any]:
        """Final export; batches still open here had results lost in flight (their leases
        expire and a later run redoes them)."""
        self._export()
        return dict(self.stats, incomplete_batches=len(self.open), provenance=self.provenance,
                    label_counts=self.label_counts)
