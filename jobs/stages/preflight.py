"""Checks that run before any stage writes anything (queue, data dir, output).

Every problem of the config is collected — folders, overlapping locations, posts files, queue
files, each classifier's params, model, files and key, GPUs — and reported together, one
``error:`` line each, exit 2, with nothing created. GPUs are checked last (they need Ray up).
"""
from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Any, Callable

from classifiers.registry import ClassifierConfigError
from classifiers.registry import preflight as classifier_preflight
from jobs.config import BackfillConfig, ConfigError
from queue_store import queue_path
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


def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def check_apart(config: BackfillConfig, names: list[str]) -> None:
    """Posts, outputs and the queue never share a folder: labels written under the posts
    path would be read back as posts by the next enqueue."""
    if "://" in config.posts.path:
        return
    posts = Path(config.posts.path).resolve()
    problems = []
    data = Path(config.data_dir).resolve()
    if _inside(data, posts):
        problems.append(f"data_dir {data} is inside posts.path {posts}; keep the queue and the "
                        "posts in separate folders")
    for name in names:
        out = (config.output_root / name).resolve()
        if _inside(out, posts) or _inside(posts, out):
            problems.append(f"the output of {name} ({out}) and posts.path {posts} overlap (one "
                            "is inside the other): the next enqueue would read labels back as "
                            "posts; keep posts and output_dir in separate folders")
    if problems:
        raise PreflightErrors(problems)


def check_queue_file(config: BackfillConfig, name: str) -> None:
    """An existing queue file must open (a corrupt one stops here, not inside an actor)."""
    from queue_store import QueueStore

    if queue_path(config.data_dir, name).is_file():
        QueueStore(config.data_dir, name, readonly=True).close()


def check_stages(config: BackfillConfig, args: Any, integrations: list[str],
                 cache_names: list[str], start: date | None, end: date | None) -> Any:
    """Everything the chosen stages need; returns the selected posts files (or None)."""
    problems = Problems()
    touched = list(dict.fromkeys(integrations + cache_names))
    if args.add_to_queue or args.run_integrations or args.write_cache:
        problems.check(check_writable, Path(config.data_dir), "data_dir")
        for name in touched:
            problems.check(check_queue_file, config, name)
    if args.run_integrations or args.write_cache:
        for name in touched:
            problems.check(check_writable, config.output_root / name, "output folder")
    if args.run_integrations:
        for name in integrations:
            clf = config.integrations[name].classifier
            problems.check(classifier_preflight, clf.type, clf.params)
    files = None
    if args.add_to_queue:
        from jobs.posts.source import find_post_files

        problems.check(check_apart, config, touched)
        files = problems.check(find_post_files, config.posts.path, start, end)
        if files is not None and files.bad and not args.skip_bad_files:
            problems.found.append(files.bad_files_message())
    gpu_users = [n for n in integrations if config.integrations[n].num_gpus > 0]
    if args.run_integrations and gpu_users:  # Ray must be up to know the cluster's GPUs
        from jobs.stages.ray_setup import check_gpus, ensure_ray

        ray = ensure_ray(config, getattr(args, "verbose", False), getattr(args, "quiet", False))
        for name in gpu_users:
            problems.check(check_gpus, ray, name, config.integrations[name])
    problems.raise_if_any()
    return files
