"""Checks that run before any stage writes anything (queue, data dir, output).

Every problem of the config is collected — folders, overlapping locations, posts files, queue
files, each classifier's params, model, files and key, GPUs — and reported together, one
``error:`` line each, exit 2, with nothing created. CPUs and GPUs are checked last (they need
Ray up).
"""
from __future__ import annotations

import os
import sys
from datetime import date
from pathlib import Path
from typing import Any, Callable, TextIO

from classifiers.registry import ClassifierConfigError
from classifiers.registry import preflight as classifier_preflight
from jobs.config import BackfillConfig, ConfigError
from queue_store.schema import QueueFileError


class PreflightErrors(ConfigError):
    """Several problems found before anything ran; the CLI prints one line for each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class Problems:
    """Runs checks, keeping what each one found instead of stopping at the first."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def check(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except PreflightErrors as exc:
            self.found.extend(exc.problems)
        except (ConfigError, ClassifierConfigError, QueueFileError, FileNotFoundError,
                ValueError) as exc:
            self.found.append(str(exc))
        return None

    def raise_if_any(self) -> None:
        if self.found:
            raise PreflightErrors(list(dict.fromkeys(self.found)))


def check_writable(path: Path, what: str) -> None:
    """``path`` is a folder that can be written, or can be created (nothing is created)."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"{what} {path} is not usable: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path} cannot be written ({probe} is not writable); "
                          "choose another folder in the config or fix its permissions")


# File systems SQLite's locking cannot trust (the queue file must be on a local disk).
NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse",
              "fuse.goofys", "fuse.mountpoint-s3", "lustre", "gpfs", "beegfs", "ceph",
              "fuse.ceph", "glusterfs", "fuse.glusterfs", "afs", "9p.nfs"}


def mount_type(path: Path, mounts: str = "/proc/mounts") -> str | None:
    """The file system type of the mount holding ``path`` (None where it cannot be told)."""
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError:
        return None
    best, kind = "", None
    target = str(path)
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        if (target == point or target.startswith(point.rstrip("/") + "/")) and \
                len(point) > len(best):
            best, kind = point, fields[2]
    return kind


def check_data_dir(config: BackfillConfig) -> None:
    """The queue file needs a local disk: not a URI, not a network file system."""
    if "://" in config.data_dir:
        raise ConfigError(f"data_dir {config.data_dir} is not a local folder: the SQLite queue "
                          "must be on the head node's local disk (put posts and output_dir in "
                          "object storage instead)")
    path = Path(config.data_dir).resolve()
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    kind = mount_type(probe)
    if kind in NETWORK_FS:
        raise ConfigError(f"data_dir {path} is on a network file system ({kind}): SQLite's "
                          "locking is not safe there; choose a folder on the head node's "
                          "local disk")
    check_writable(path, "data_dir")


def check_output(config: BackfillConfig, name: str) -> None:
    """The integration's output can be written: a local folder (checked without writing) or
    an object store (a probe object written and deleted)."""
    out = config.output_location(name)
    if out.local:
        check_writable(Path(out.path), "output folder")
        return
    try:
        out.check_writable()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"output {out} cannot be written ({_first_line(exc)}); check the "
                          "bucket, object_store.endpoint_url and the credentials in the "
                          "environment (AWS_ACCESS_KEY_ID / AWS_PROFILE)") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def check_apart(config: BackfillConfig, names: list[str]) -> None:
    """Posts, outputs and the queue never share a folder: labels written under the posts
    path would be read back as posts by the next enqueue."""
    if "://" in config.posts.path or "://" in config.data_dir:
        return
    posts = Path(config.posts.path).resolve()
    problems = []
    data = Path(config.data_dir).resolve()
    if _inside(data, posts):
        problems.append(f"data_dir {data} is inside posts.path {posts}; keep the queue and the "
                        "posts in separate folders")
    for name in names:
        location = config.output_location(name)
        if not location.local:
            continue
        out = Path(location.path)
        if _inside(out, posts) or _inside(posts, out):
            problems.append(f"the output of {name} ({out}) and posts.path {posts} overlap (one "
                            "is inside the other): the next enqueue would read labels back as "
                            "posts; keep posts and output_dir in separate folders")
    if problems:
        raise PreflightErrors(problems)


def check_queue_file(config: BackfillConfig, name: str, ledger: bool = False) -> None:
    """An existing queue file must open (a corrupt one stops here, not inside an actor), and
    for an enqueue (``ledger``) its ledger runs must pass their checksums; none yet (or one
    another command is creating now) is nothing to check."""
    from queue_store import NoQueueError, QueueStore

    try:
        store = QueueStore(config.data_dir, name, readonly=True)
    except NoQueueError:
        return
    try:
        if ledger:
            store.verify_ledger()
    finally:
        store.close()


def check_can_ask(yes: bool, ask: TextIO) -> None:
    """Clearing without ``--yes`` asks on a terminal; with none to ask on, it is refused."""
    if not yes and not ask.isatty():
        raise ConfigError("clearing asks for confirmation and there is no terminal to ask "
                          "on: pass --yes to clear (nothing was deleted)")


def check_stages(config: BackfillConfig, args: Any, integrations: list[str],
                 cache_names: list[str], start: date | None, end: date | None) -> Any:
    """Everything the chosen stages need; returns the selected posts files (or None) and,
    for ``-r posts_used_in_feeds``, the feed days (else None)."""
    problems = Problems()
    touched = list(dict.fromkeys(integrations + cache_names))
    if args.add_to_queue or args.run_integrations or args.write_cache:
        problems.check(check_data_dir, config)
        for name in touched:
            problems.check(check_queue_file, config, name,
                           bool(args.add_to_queue) and name in integrations)
    if args.run_integrations or args.write_cache:
        for name in touched:
            problems.check(check_output, config, name)
    # --classifier-later: queued now, built later (a model or file config_hash holds that is
    # not there yet makes a provisional hash, which the run adopts: enqueue.adopt_deferred).
    later = args.classifier_later and not args.run_integrations
    for name in integrations if (args.run_integrations or args.add_to_queue) and not later \
            else []:
        clf = config.integrations[name].classifier
        problems.check(classifier_preflight, clf.type, clf.params)
    if args.write_cache and args.bypass_write:  # it asks before clearing: can it?
        problems.check(check_can_ask, args.yes, sys.stdin)
    files = feeds = None
    if args.add_to_queue:
        from jobs.posts.source import find_post_files

        problems.check(check_apart, config, touched)
        feeds = None
        if args.record_type == "posts_used_in_feeds":
            from jobs.posts.feeds import find_feed_days, posts_window

            feeds = problems.check(find_feed_days, config, start, end)
            start = posts_window(config, start)  # the posts a feed day's look-back needs
        files = problems.check(find_post_files, config.location(config.posts.path), start,
                               end)
        if files is not None and files.bad and not args.skip_bad_files:
            problems.found.append(files.bad_files_message())
    gpu_users = [n for n in integrations if config.integrations[n].num_gpus > 0]
    # Ray must be up to know the cluster's CPUs and GPUs: started for that when nothing else
    # is wrong, or when GPUs are asked for (so every problem is told in one go).
    if args.run_integrations and (gpu_users or not problems.found):
        from jobs.stages.ray_setup import check_resources, ensure_ray

        ray = ensure_ray(config, getattr(args, "verbose", False), getattr(args, "quiet", False))
        for name in integrations:
            problems.check(check_resources, ray, name, config.integrations[name],
                           config.pipeline.read_task_num_cpus)
    problems.raise_if_any()
    return files, feeds
