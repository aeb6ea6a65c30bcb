"""Config and output helpers shared by the Ray pipeline tests."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads

from jobs.config import BackfillConfig, parse_config
from tests.queue_helpers import Store

NAME = "ml_inference_intergroup"
PLUGIN = "tests.plugins:KeywordClassifier"


def pipeline_config(data_dir: Path, classifier: dict | None = None, top: dict | None = None,
                    **integ: Any) -> BackfillConfig:
    """``top``: more of the config's top-level keys (``output_dir``, ``object_store``)."""
    raw = {
        "data_dir": str(data_dir),
        "queue": {"batch_size": 500, "lease_seconds": 3, "max_attempts": 3},
        "pipeline": {"no_progress_timeout_s": 120, "export_rows": 2000},
        "integrations": {NAME: {"code": "g", "batch_size": 250, "num_cpus": 0.5,
                                "classifier": classifier or {"type": PLUGIN}, **integ}},
        **(top or {}),
    }
    return parse_config(raw)


def version_of(config: BackfillConfig) -> str:
    """The config_hash a run of ``config`` labels under (and claims batches queued for)."""
    return config.integrations[NAME].classifier.config_hash


def enqueue(data_dir: Path, posts: list[dict], batch_size: int = 500,
            config: BackfillConfig | None = None) -> Any:
    """Queue ``posts`` for the version ``config`` labels (the store's default version
    otherwise)."""
    store = Store(data_dir, NAME)
    try:
        return store.enqueue(posts, batch_size=batch_size,
                             config_hash=version_of(config) if config else "")
    finally:
        store.close()


def queue_status(data_dir: Path) -> Any:
    store = Store(data_dir, NAME)
    try:
        return store.status()
    finally:
        store.close()


def output_uris(data_dir: Path) -> list[str]:
    root = Path(data_dir) / NAME
    if not root.exists():
        return []
    return pads.dataset(root, partitioning="hive").to_table(columns=["uri"]).column(
        "uri").to_pylist()


def output_table(data_dir: Path):
    return pads.dataset(Path(data_dir) / NAME, partitioning="hive").to_table()


def driver_command(config: BackfillConfig, ray_address: str, config_path: Path,
                   max_records: int | None = None) -> list[str]:
    config_path.write_text(config.model_dump_json())
    budget = [] if max_records is None else [str(max_records)]
    return [sys.executable, "-m", "tests.driver_proc", str(config_path), ray_address, *budget]


def load_config_json(path: str) -> BackfillConfig:
    return BackfillConfig.model_validate(json.loads(Path(path).read_text()))


def run_inference(config: BackfillConfig, integration: str, *args: Any, **kw: Any) -> Any:
    """One integration's run (``run_integrations`` of one): its summary, or what stopped it
    raised (``RunStopped`` with the partial summary)."""
    from jobs.stages.inference import run_integrations

    [outcome] = run_integrations(config, [integration], *args, **kw)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
