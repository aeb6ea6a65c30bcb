"""Starting or joining Ray, and the checks that must happen before Ray Data runs."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Iterator

from jobs.config import BackfillConfig, ConfigError, IntegrationConfig
from jobs.stages.errors import RunStopped


# ray.init() kwargs that only apply to a Ray the job starts itself.
START_ONLY = ("num_cpus", "num_gpus", "resources", "labels", "object_store_memory",
              "_system_config", "include_dashboard", "dashboard_host", "dashboard_port",
              "_temp_dir")
# Actors never reach for the network: a model missing from the cache is an error up front.
OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def join_address(config: BackfillConfig) -> str | None:
    """The cluster to join, only when told: ``--address``/``ray.address`` in the config, or
    ``RAY_ADDRESS`` (which ``ray job submit`` sets). None: start a local Ray — also for the
    address ``local``, Ray's own word for that (so the config's ``ray:`` block applies)."""
    address = config.ray.address or os.environ.get("RAY_ADDRESS") or None
    return None if address is None or address.strip().lower() == "local" else address


_set_offline: dict[str, str] = {}


def prefer_offline() -> dict[str, str]:
    """HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE=1 unless the user set them; returns what this
    process set (to hand on to the actors of a cluster it joins)."""
    for key in OFFLINE_ENV:
        if key not in os.environ:
            os.environ[key] = _set_offline[key] = "1"
    return dict(_set_offline)


def ensure_ray(config: BackfillConfig, verbose: bool = False, quiet: bool = False) -> Any:
    """Join the cluster the user named, or start a local Ray configured by the ``ray:`` block
    — never whichever head happens to run on this host. Says which, once."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray ends a driver that loses its cluster for 60 s with a bare exit 1; the RunGuard
    # notices first (30 s) and stops the run with a line and its summary.
    os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", "120")
    offline = prefer_offline()
    if not verbose:
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
        # Ray's C++ core prints error-level notes on stderr in normal runs (e.g. about
        # actor constructor arguments); real failures still reach us as exceptions.
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    import ray

    if not ray.is_initialized():
        kwargs = config.ray.init_kwargs()
        kwargs.pop("address", None)
        kwargs.setdefault("log_to_driver", verbose)
        kwargs.setdefault("logging_level", logging.INFO if verbose else logging.ERROR)
        address = join_address(config)
        if address:
            ignored = sorted(k for k in kwargs if k in START_ONLY)
            for key in ignored:
                del kwargs[key]
            if offline:  # a started Ray's workers inherit this process's environment
                runtime_env = dict(kwargs.get("runtime_env") or {})
                runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **offline}
                kwargs["runtime_env"] = runtime_env
            if ignored:
                print(f"info: joining a running Ray cluster; the config's ray: keys "
                      f"{', '.join(ignored)} only apply to a Ray this job starts, so they "
                      "are ignored", file=sys.stderr)
        else:
            kwargs.setdefault("include_dashboard", False)
        if address:
            with contextlib.nullcontext() if verbose else _stderr_silenced():
                ray.init(address=address, **kwargs)
        else:
            _start_local(ray, kwargs, config.ray.start_attempts, verbose)
        _connected.append(ray)
        if not quiet:
            print(f"ray: {ray_where(ray)}", file=sys.stderr)
        if not verbose:
            logging.getLogger("ray.data").setLevel(logging.ERROR)
        # Ray's own SIGTERM handler exits at once; ours unwinds like Ctrl-C, so the run
        # hands its claims back first (``ray job stop`` and ``kill`` send SIGTERM).
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, interrupt_on_sigterm)
    return ray


# What Ray raises when the raylet it started has not registered in time: Ray waits 30 s, or
# longer when ``RAY_raylet_start_wait_time_s`` (Ray's own setting, read from the environment
# the process starts with) says so — each of its checks waits that long.
SLOW_START = "timed out during startup"
START_WAIT_ENV = "RAY_raylet_start_wait_time_s"
STOP_WAIT_S = 10.0  # at most this long for a failed start's processes to end


def ray_start_wait_s() -> float:
    """How long Ray gives its raylet to register before it gives up on a start."""
    try:
        return max(30.0, float(os.environ.get(START_WAIT_ENV, 30)))
    except ValueError:
        return 30.0


def _start_local(ray: Any, kwargs: dict[str, Any], attempts: int, verbose: bool) -> None:
    """``ray.init`` of a local Ray, started again (``attempts`` starts in all) when it does not
    come up in time; what a failed start left running is stopped, by PID, first."""
    t0, wait = time.monotonic(), ray_start_wait_s()
    for attempt in range(1, attempts + 1):
        before = _own_processes()
        try:
            with contextlib.nullcontext() if verbose else _stderr_silenced():
                ray.init(address="local", **kwargs)
            return
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for this
            if SLOW_START not in str(exc):
                raise
            _stop_started_since(before)
            if attempt < attempts:
                print(f"ray: the local Ray did not come up within Ray's {wait:g} s "
                      f"({machine_load()}); starting it again ({attempt + 1} of {attempts})",
                      file=sys.stderr)
    raise RunStopped(
        f"the local Ray did not start: {attempts} start(s), each given Ray's {wait:g} s, "
        f"{time.monotonic() - t0:.0f} s in all ({machine_load()}): this machine is too busy "
        "to start Ray now; rerun when it is quieter, give each start more time "
        f"({START_WAIT_ENV}={max(120, int(wait) * 2)} in the command's environment) or more "
        f"starts (--set ray.start_attempts={attempts * 2}), or join a Ray that is running "
        "(--address)", 1)


def machine_load() -> str:
    """This host's load, in words."""
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def local_ray_alive() -> bool:
    """The GCS and raylet of the local Ray this process started are alive (running, or held
    up by a busy machine), so actors that do not answer are slow, not gone."""
    import psutil

    names = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                names.add(proc.name())
        except psutil.NoSuchProcess:
            pass
    return {"gcs_server", "raylet"} <= names


def _own_processes() -> set[tuple[int, float]]:
    import psutil

    return {(p.pid, p.create_time()) for p in psutil.Process().children(recursive=True)}


def _stop_started_since(before: set[tuple[int, float]]) -> None:
    """SIGKILL this process's children that were not there before (a failed start's GCS,
    raylet and helpers: ours, by PID), and wait until they have ended: a next start must not
    begin beside them (on a busy machine a killed process takes a while to go)."""
    import psutil

    killed = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if (proc.pid, proc.create_time()) not in before:
                proc.kill()
                killed.append(proc)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(killed, timeout=STOP_WAIT_S)  # children are reaped, others polled


def ray_where(ray: Any) -> str:
    """The Ray this run uses, in words: a local one it started, or the cluster it joined."""
    context = ray.get_runtime_context()
    address = getattr(context, "gcs_address", "") or "?"
    resources = ray.cluster_resources()
    size = f"{resources.get('CPU', 0):g} CPUs" + (
        f", {resources['GPU']:g} GPUs" if resources.get("GPU") else "")
    if started_here(ray):
        return (f"started a local Ray for this run at {address} ({size}); other Ray "
                "instances on this host are not used (RAY_ADDRESS or --address joins one)")
    return f"joined the Ray cluster at {address} ({size})"


def started_here(ray: Any) -> bool:
    """Is this the local Ray this process started (not a cluster it joined)?"""
    try:
        node = ray._private.worker.global_worker.node
        return bool(node is not None and node.head)
    except AttributeError:
        return False


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Ray's C++ logging announces its level on stderr when it starts; a normal run shows
    only our own lines (a failure to start still raises, with its message)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


_connected: list[Any] = []  # Ray, once ensure_ray connected it (not someone before it)


def release_ray() -> None:
    """After a command's last line: disconnect from the Ray ``ensure_ray`` connected (a local
    one of this command's own is stopped). Ray's listeners stop before its processes do, so
    the teardown adds nothing after our last line (at exit Ray would print what its raylet
    says of workers it stops); a Ctrl-C during the (bounded) teardown is ignored instead of
    ending in a traceback. A Ray connected before the command (a notebook's) is left."""
    if not _connected:
        return
    ray = _connected.pop()
    if not ray.is_initialized():
        return
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        ray.shutdown()
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


def interrupt_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def check_resources(ray: Any, name: str, integ: IntegrationConfig,
                    read_task_num_cpus: float) -> None:
    """Ray would wait (up to the no-progress timeout) for GPUs that do not exist, or for the
    CPU a read task needs once the classifier actors hold every CPU (nothing is read, so
    nothing is labelled)."""
    resources = ray.cluster_resources()
    have = resources.get("GPU", 0)
    if integ.num_gpus > 0 and have < integ.num_gpus * integ.actors.min:
        raise ConfigError(
            f"integration {name!r} asks for num_gpus={integ.num_gpus} per actor "
            f"(x{integ.actors.min} actors) but the Ray cluster has {have:g} GPU(s); "
            "set num_gpus: 0 for CPU, or submit to a cluster with GPUs")
    cpus = resources.get("CPU", 0)
    need = integ.num_cpus * integ.actors.min + read_task_num_cpus
    if need > cpus:
        raise ConfigError(
            f"integration {name!r}: {integ.actors.min} classifier actor(s) x num_cpus="
            f"{integ.num_cpus:g} plus one read task (pipeline.read_task_num_cpus="
            f"{read_task_num_cpus:g}) need {need:g} CPUs, but the Ray cluster has {cpus:g}: "
            "no post could be read; lower num_cpus (an accelerator's actor needs little host "
            "CPU) or actors.min")


def driver_node_strategy(ray: Any) -> Any:
    """Pin to the driver's node, where the SQLite queue file lives."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
