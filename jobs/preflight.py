"""Checks that run before any stage writes anything (queue, data dir, output).

Each failure is a ``ConfigError`` (or ``ClassifierConfigError``) whose message is one line
saying what is wrong and how to fix it; the CLI prints it and exits 2 with nothing created.
"""
from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Any

from classifiers.registry import preflight as classifier_preflight
from jobs.config import BackfillConfig, ConfigError


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


def check_stages(config: BackfillConfig, args: Any, integrations: list[str],
                 cache_names: list[str], start: date | None, end: date | None) -> Any:
    """Everything the chosen stages need; returns the selected posts files (or None)."""
    if args.run_integrations:
        for name in integrations:
            clf = config.integrations[name].classifier
            classifier_preflight(clf.type, clf.params)
        gpu_users = [n for n in integrations if config.integrations[n].num_gpus > 0]
        if gpu_users:  # Ray must be up to know the cluster's GPUs; still nothing written
            from jobs.ray_setup import check_gpus, ensure_ray

            ray = ensure_ray(config, getattr(args, "verbose", False))
            for name in gpu_users:
                check_gpus(ray, name, config.integrations[name])
    if args.add_to_queue or args.run_integrations or args.write_cache:
        check_writable(Path(config.data_dir), "data_dir")
    if args.run_integrations or args.write_cache:
        for name in dict.fromkeys(integrations + cache_names):
            check_writable(config.output_root / name, "output folder")
    files = None
    if args.add_to_queue:
        from jobs.posts_source import find_post_files

        files = find_post_files(config.posts.path, start, end)
        if files.bad and not args.skip_bad_files:
            raise ConfigError(files.bad_files_message())
    return files
