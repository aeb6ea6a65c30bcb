"""Starting or joining Ray, and the checks that must happen before Ray Data runs."""
from __future__ import annotations

import os
import signal
import threading
from typing import Any

from jobs.config import BackfillConfig, ConfigError, IntegrationConfig


def ensure_ray(config: BackfillConfig) -> Any:
    """Join the running Ray (``ray job submit`` sets RAY_ADDRESS) or start a local one."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if not ray.is_initialized():
        kwargs = dict(config.ray)
        kwargs.setdefault("include_dashboard", False)
        kwargs.setdefault("log_to_driver", False)
        ray.init(**kwargs)
        # Ray's own SIGTERM handler exits at once; ours unwinds like Ctrl-C, so the run
        # hands its claims back first (``ray job stop`` and ``kill`` send SIGTERM).
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, interrupt_on_sigterm)
    return ray


def interrupt_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def check_gpus(ray: Any, name: str, integ: IntegrationConfig) -> None:
    """Ray would wait (up to the no-progress timeout) for GPUs that do not exist."""
    if integ.num_gpus <= 0:
        return
    have = ray.cluster_resources().get("GPU", 0)
    if have < integ.num_gpus * integ.actors.min:
        raise ConfigError(
            f"integration {name!r} asks for num_gpus={integ.num_gpus} per actor "
            f"(x{integ.actors.min} actors) but the Ray cluster has {have:g} GPU(s); "
            "set num_gpus: 0 for CPU, or submit to a cluster with GPUs")


def driver_node_strategy(ray: Any) -> Any:
    """Pin to the driver's node, where the SQLite queue file lives."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
