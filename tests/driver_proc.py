"""A backfill driver in its own OS process, joined to the test session's Ray cluster."""
from __future__ import annotations

import json
import sys

import ray

from tests.pipeline_helpers import run_inference
from tests.pipeline_helpers import NAME, load_config_json

if __name__ == "__main__":
    config = load_config_json(sys.argv[1])
    ray.init(address=sys.argv[2], log_to_driver=False)
    budget = int(sys.argv[3]) if len(sys.argv) > 3 else None
    summary = run_inference(config, NAME, max_records_per_run=budget)
    print("SUMMARY " + json.dumps(summary.model_dump()), flush=True)
