"""The Python API, for notebooks: ``open_labels`` reads one version's labels, ``run`` runs the
stages a command line would — the same code, guarantees and summaries. The command line
(``jobs.backfill``) is this, plus flags, lines and exit codes.

    from jobs.api import open_labels, run
    summaries = run("configs/demo.yaml", stages=("enqueue", "inference", "write_cache"))
    labels = open_labels("configs/demo.yaml", "ml_inference_intergroup").to_table()
"""
from __future__ import annotations

import sys
from datetime import date
from pathlib import Path
from typing import Sequence, TextIO

import pyarrow.compute as pc
import pyarrow.dataset as pads

from jobs.config import BackfillConfig, ConfigError, load_config
from jobs.stages.summary import RunSummary

__all__ = ["open_labels", "run", "CommandEnded", "ConfigError", "STAGES"]  # ConfigError: exit 2
STAGES = ("enqueue", "inference", "write_cache")


class CommandEnded(Exception):
    """The stages ran, but the command line would not exit 0: ``exit_code`` 3 (posts were
    dead-lettered in this run) or 4 (the posts selection matched no post); ``summaries`` as
    ``run`` returns them. Errors and early stops raise as the command line's do:
    ``ConfigError`` and ``PreflightErrors`` (exit 2), ``RunStopped`` (its ``exit_code`` and
    partial ``summary``: a rejected key, Ctrl-C, a lost cluster)."""

    def __init__(self, exit_code: int, summaries: list[RunSummary]) -> None:
        super().__init__(f"the command would exit {exit_code} (see the lines above)")
        self.exit_code = exit_code
        self.summaries = summaries


def _config(config: BackfillConfig | str | Path) -> BackfillConfig:
    """The config as a command uses it: loaded from its file, or a copy of the object whose
    config_hash is computed now (each call is a command of its own)."""
    if isinstance(config, BackfillConfig):
        return config.for_a_new_command()
    return load_config(config)


def run(config: BackfillConfig | str | Path, stages: Sequence[str] = STAGES,
        integrations: Sequence[str] | None = None, *, start_date: date | None = None,
        end_date: date | None = None, max_records_per_run: int | None = None,
        relabel_other_versions: bool = False, quiet: bool = True,
        out: TextIO | None = None) -> list[RunSummary]:
    """Run ``stages`` (of ``STAGES``, in that order) for ``integrations`` (names or codes;
    None: every integration of the config), as ``-r posts --add-to-queue -i … --run-integrations
    --write-cache …`` would; the summaries, in the order their stages ended (printed to
    ``out`` too, as the command line prints them). See ``CommandEnded`` for what raises."""
    from jobs.cli.args import build_parser, check_args
    from jobs.cli.stages import run_command

    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise ValueError(f"stages must be some of {', '.join(STAGES)}; got {list(stages)}")
    cfg = _config(config)
    names = list(integrations or [])
    argv = [flag for name in names for flag in ("-i", name)]
    if "enqueue" in stages:
        argv += ["-r", "posts", "--add-to-queue"]
    if "inference" in stages:
        argv += ["--run-integrations"]
    if "write_cache" in stages:
        argv += ["--write-cache", names[0] if len(names) == 1 else "all"]
    for flag, value in (("--start-date", start_date), ("--end-date", end_date),
                        ("--max-records-per-run", max_records_per_run)):
        if value is not None:
            argv += [flag, str(value)]
    argv += ["--relabel-other-versions"] * relabel_other_versions + ["--quiet"] * quiet
    args = build_parser().parse_args(argv)
    check_args(args)
    code, summaries = run_command(cfg, args, out or sys.stdout)
    if code:
        raise CommandEnded(code, summaries)
    return summaries


def open_labels(config: BackfillConfig | str | Path, integration: str,
                config_hash: str | None = None) -> pads.Dataset:
    """The published labels of one integration (name or code) and one version: ``config_hash``,
    or the one the config labels with now. A ``pyarrow.dataset.Dataset`` of the output's own
    column types (``.to_table()``, ``.to_table().to_pandas()``, DuckDB reads it as is), each
    post once. Raises ``LookupError`` when that version has no labels (naming those that do)."""
    cfg = _config(config)
    name, integ = cfg.resolve_integration(integration)
    wanted = config_hash or integ.classifier.config_hash
    where = cfg.output_location(name)
    if not where.has_parquet():
        raise LookupError(f"no labels of {name} under {where.uri} yet: run the stages "
                          "'inference' and 'write_cache' first")
    every = where.dataset()
    mine = every.filter(pc.field("config_hash") == wanted)
    if mine.count_rows() == 0:
        have = every.to_table(columns=["config_hash"]).column("config_hash").value_counts()
        shown = ", ".join(f"{v['values']} ({v['counts']} rows)" for v in have.to_pylist())
        raise LookupError(f"no labels of {name} with config_hash {wanted} under {where.uri}; "
                          f"it holds {shown}: pass config_hash=… to read one of them")
    return mine
