"""Stage 4 alone: the output queue published and exported to parquet, staged garbage deleted,
exported rows and markers cleared on request."""
from __future__ import annotations

import time

from jobs.config import BackfillConfig
from jobs.stages.summary import RunSummary, new_run_id, now_iso
from queue_store import QueueStore, export_output
from queue_store.staging import collect_garbage


def write_cache(config: BackfillConfig, integration: str, clear_queue: bool = False) -> RunSummary:
    """Stage 4 alone: export the output queue to parquet; optionally clear exported rows."""
    name, _ = config.resolve_integration(integration)
    summary = RunSummary(run_id=new_run_id(name), integration=name, stage="write_cache",
                         started_at=now_iso())
    t0 = time.monotonic()
    out = config.output_location(name)
    store = QueueStore(config.data_dir, name, max_attempts=config.queue.max_attempts)
    try:
        stats = export_output(store, out, config.pipeline.export_rows)
        collect_garbage(store, out)  # staged files no commit names (a run killed meanwhile)
        if clear_queue:
            store.clear_exported()
            store.compact()  # the cleared rows' pages back to the file system
    finally:
        store.close()
    summary.exported_rows, summary.parquet_files = stats.rows, stats.files
    return summary.finish(config.data_dir, t0, stats.rows, str(out))
