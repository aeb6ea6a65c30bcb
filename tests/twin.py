"""An in-process twin of what a run asks of Ray, for the tests whose claims Ray adds nothing to.

A run's QueueActor and WriterActor become plain objects in this process, each with a thread
per concurrency group (its methods run in the order they were called, as an actor's do), and
a pass's Ray Data job becomes read tasks and ``ClassifierStage`` instances on threads here: the
same classes, the same calls, the same SQLite files and parquet, without a worker process (and
its imports) per actor per run. Arguments and answers cross by pickle, as they would between
processes. ``ray.get`` / ``ray.wait`` / ``ray.kill`` answer for the twin's references and
handles and pass everything else to Ray, so the session's real Ray (resources, node id) stays
the cluster the run sees.

Not twinned: what needs a process of its own — an actor or a driver that is killed, a post
that ends its process, several drivers at once, a cluster that goes away. Those tests keep the
real Ray (the ``ray_session`` fixture).
"""
from __future__ import annotations

import itertools
import pickle
import queue
import threading
import time
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import pyarrow as pa
import ray
from ray.exceptions import ActorDiedError, GetTimeoutError

_HANDLES: dict[int, "Handle"] = {}
_IDS = itertools.count()


def _crossed(value: Any) -> Any:
    """``value`` as the other side of a process boundary gets it."""
    return pickle.loads(pickle.dumps(value))


def _handle(key: int) -> "Handle":
    return _HANDLES[key]


class Ref:
    """What ``.remote()`` returns: the call's answer once it has run."""

    def __init__(self, future: Future) -> None:
        self.future = future

    def result(self, timeout: float | None) -> Any:
        try:
            return self.future.result(timeout)
        except FutureTimeout:
            raise GetTimeoutError(f"a twin call did not answer within {timeout} s") from None
        except CancelledError:  # queued when its actor was killed
            raise ActorDiedError() from None


class Handle:
    """An actor handle: ``handle.method.remote(...)``."""

    def __init__(self, cls: type, args: tuple, kwargs: dict, options: dict) -> None:
        self.key = next(_IDS)
        _HANDLES[self.key] = self
        self.cls = cls
        self.dead = False
        groups = dict(options.get("concurrency_groups") or {})
        self._pools = {group: ThreadPoolExecutor(size, f"twin-{cls.__name__}-{group}")
                       for group, size in groups.items()}
        self._default = ThreadPoolExecutor(options.get("max_concurrency", 1),
                                           f"twin-{cls.__name__}")
        self.obj: Any = None
        args, kwargs = _crossed((args, kwargs))
        self._created = self._default.submit(self._create, args, kwargs)

    def _create(self, args: tuple, kwargs: dict) -> None:
        self.obj = self.cls(*args, **kwargs)

    def __reduce__(self) -> tuple:
        return _handle, (self.key,)

    def __getattr__(self, name: str) -> "_Method":
        if name.startswith("__"):
            raise AttributeError(name)
        function = getattr(self.cls, name)
        group = getattr(function, "__ray_concurrency_group__", None)
        return _Method(self, name, self._pools.get(group, self._default))

    def call(self, name: str, pool: ThreadPoolExecutor, args: tuple, kwargs: dict) -> Ref:
        if self.dead:
            future: Future = Future()
            future.set_exception(ActorDiedError())
            return Ref(future)
        args, kwargs = _crossed((args, kwargs))

        def run() -> Any:
            try:
                self._created.result()
            except Exception as exc:  # noqa: BLE001 - its creation failed, as Ray says it
                raise ActorDiedError() from exc
            if self.dead:
                raise ActorDiedError()
            return _crossed(getattr(self.obj, name)(*args, **kwargs))

        return Ref(pool.submit(run))

    def kill(self) -> None:
        """As its process ending would: no further call runs (queued ones answer as dead), its
        own threads stop. A call already running finishes (a thread cannot be ended), where
        Ray would end it with the process: tests of kills keep the real Ray."""
        self.dead = True
        stop = getattr(self.obj, "_stop", None)  # the QueueActor's lease heartbeat
        if isinstance(stop, threading.Event):
            stop.set()
        for pool in (self._default, *self._pools.values()):
            pool.shutdown(wait=False, cancel_futures=True)


class _Method:
    def __init__(self, handle: Handle, name: str, pool: ThreadPoolExecutor) -> None:
        self.handle, self.name, self.pool = handle, name, pool

    def remote(self, *args: Any, **kwargs: Any) -> Ref:
        return self.handle.call(self.name, self.pool, args, kwargs)


class ActorClass:
    """``ray.remote(cls)`` / ``ray.remote(**options)(cls)``, then ``.options(...).remote()``;
    every handle made is added to ``made`` (the twin ends them after the test)."""

    def __init__(self, cls: type, options: dict, made: list[Handle]) -> None:
        self.cls, self.opts, self.made = cls, options, made

    def options(self, **options: Any) -> "ActorClass":
        return ActorClass(self.cls, {**self.opts, **options}, self.made)

    def remote(self, *args: Any, **kwargs: Any) -> Handle:
        handle = Handle(self.cls, args, kwargs, self.opts)
        self.made.append(handle)
        return handle


class Twin:
    """Installed for one test (``install``): Ray's calls answer for twinned actors (the
    project's, from ``actors/``, and the classes named in ``also``)."""

    def __init__(self, also: tuple[type, ...] = ()) -> None:
        self.get, self.wait, self.kill, self.remote = ray.get, ray.wait, ray.kill, ray.remote
        self.also = also
        self.handles: list[Handle] = []

    def _twinned(self, target: Any) -> bool:
        return isinstance(target, type) and (target.__module__.startswith("actors.")
                                             or target in self.also)

    def install(self, monkeypatch: Any) -> None:
        from jobs.stages.inference import InferenceRun

        monkeypatch.setattr(ray, "get", self._get)
        monkeypatch.setattr(ray, "wait", self._wait)
        monkeypatch.setattr(ray, "kill", self._kill)
        monkeypatch.setattr(ray, "remote", self._remote)
        monkeypatch.setattr(InferenceRun, "_stream", stream)

    def close(self) -> None:
        for handle in self.handles:
            handle.kill()
            _HANDLES.pop(handle.key, None)

    def _remote(self, *args: Any, **options: Any) -> Any:
        if args and self._twinned(args[0]):
            return self._class(args[0], {})
        if args:
            return self.remote(*args, **options)

        def decorate(target: Any) -> Any:
            return self._class(target, options) if self._twinned(target) else \
                self.remote(**options)(target)
        return decorate

    def _class(self, cls: type, options: dict) -> ActorClass:
        return ActorClass(cls, options, self.handles)

    def _get(self, refs: Any, *, timeout: float | None = None) -> Any:
        if isinstance(refs, Ref):
            return refs.result(timeout)
        if isinstance(refs, list) and any(isinstance(r, Ref) for r in refs):
            deadline = None if timeout is None else time.monotonic() + timeout
            return [self._get(r, timeout=None if deadline is None
                              else max(0.0, deadline - time.monotonic())) for r in refs]
        return self.get(refs, timeout=timeout)

    def _wait(self, refs: list, *, num_returns: int = 1, timeout: float | None = None,
              **kw: Any) -> tuple[list, list]:
        if not any(isinstance(r, Ref) for r in refs):
            return self.wait(refs, num_returns=num_returns, timeout=timeout, **kw)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ready = [r for r in refs if not isinstance(r, Ref) or r.future.done()]
            if len(ready) >= num_returns or (deadline is not None
                                             and time.monotonic() >= deadline):
                return ready, [r for r in refs if r not in ready]
            time.sleep(0.01)

    def _kill(self, actor: Any, **kw: Any) -> None:
        if isinstance(actor, Handle):
            actor.kill()
        else:
            self.kill(actor, **kw)


END = object()


def stream(run: Any, source: Any, stage: dict[str, Any], map_whole_blocks: Any) -> None:
    """``InferenceRun._stream`` in this process: ``source``'s read tasks (at most
    ``read_tasks`` at once, in order, as Ray Data runs them) fill blocks of the target size
    that ``ClassifierStage`` instances (the pool's minimum, at least one) label; the first
    error of either ends the pass and is raised."""
    from actors.classifier_stage import ClassifierStage

    compute, kwargs = stage["compute"], stage["fn_constructor_kwargs"]
    workers = max(1, compute.min_size)
    blocks: queue.Queue = queue.Queue(maxsize=2 * workers)
    errors: list[BaseException] = []
    failed = threading.Event()
    slots = threading.Semaphore(source.read_tasks)
    tasks = source.get_read_tasks(source.read_tasks)

    def put(item: Any) -> bool:
        while not failed.is_set():
            try:
                blocks.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def read(task: Any) -> None:
        parts: list[pa.Table] = []
        size = 0
        try:
            for table in task():
                parts.append(table)
                size += table.nbytes
                if size > source.block_bytes:  # Ray Data hands this block on
                    if not put(pa.concat_tables(parts)):
                        return
                    parts, size = [], 0
            if parts and sum(t.num_rows for t in parts):
                put(pa.concat_tables(parts))
        except BaseException as exc:  # noqa: BLE001 - the pass's error
            errors.append(exc)
            failed.set()
        finally:
            slots.release()

    def label() -> None:
        try:
            instance = ClassifierStage(**_crossed(kwargs))
            while not failed.is_set():
                try:
                    block = blocks.get(timeout=0.1)
                except queue.Empty:
                    continue
                if block is END:
                    return
                if block.num_rows:
                    instance(block)
        except BaseException as exc:  # noqa: BLE001 - the pass's error
            errors.append(exc)
            failed.set()

    labellers = [threading.Thread(target=label, daemon=True, name="twin-stage")
                 for _ in range(workers)]
    for thread in labellers:
        thread.start()
    readers = []
    for task in tasks:
        while not slots.acquire(timeout=0.1):
            if failed.is_set():
                break
        if failed.is_set():
            break
        reader = threading.Thread(target=read, args=(task,), daemon=True, name="twin-read")
        reader.start()
        readers.append(reader)
    for reader in readers:
        while reader.is_alive() and not failed.is_set():
            reader.join(0.1)
    for _ in labellers:
        put(END)
    for thread in labellers:
        while thread.is_alive() and not failed.is_set():
            thread.join(0.1)
    if errors:
        raise errors[0]
