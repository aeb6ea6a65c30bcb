"""Write small configs and datasets for the CLI tests."""
from __future__ import annotations

import signal
from pathlib import Path

import yaml

from jobs.tools.demo_data import write_demo

ROOT = Path(__file__).resolve().parents[1]


def write_config(tmp_path: Path, classifier: dict, posts: Path | None = None,
                 **integ) -> Path:
    cfg = {
        "data_dir": str(tmp_path / "data"),
        "posts": {"path": str(posts or tmp_path / "posts")},
        "queue": {"batch_size": 100, "lease_seconds": 5, "max_attempts": 2},
        "pipeline": {"no_progress_timeout_s": 120},
        "integrations": {"ml_inference_intergroup": {
            "code": "g", "classifier": classifier, "batch_size": 100, "num_cpus": 0.5, **integ}},
    }
    path = tmp_path / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def write_posts(tmp_path: Path, n: int = 400, days: int = 3) -> Path:
    from datetime import date

    out = tmp_path / "posts"
    write_demo(out, n, days, date(2024, 10, 1))
    return out


def ctrl_c_as_in_a_terminal() -> None:
    """SIGINT handled as in a terminal, even where this suite runs as a background job (which
    starts with SIGINT ignored, and Python then keeps ignoring it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
