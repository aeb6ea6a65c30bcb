"""``python -m jobs.backfill`` with the clock of Ray's raylet-registration wait running
``SPEED`` times fast: the 30 s of Ray's loop (``ray/_private/node.py``) pass in 30/SPEED s, so a
start that fails as under load fails in seconds. Only that module's clock is changed; the
failure itself is Ray's own (its GCS answers the registration late)."""
from __future__ import annotations

import sys
import time
import types

import ray._private.node as ray_node

SPEED = 10.0


def _fast_time() -> types.SimpleNamespace:
    fast = {name: getattr(time, name) for name in dir(time) if not name.startswith("_")}
    fast["monotonic"] = lambda: time.monotonic() * SPEED
    return types.SimpleNamespace(**fast)


if __name__ == "__main__":
    ray_node.time = _fast_time()
    from jobs.backfill import cli

    sys.exit(cli())
