"""``python -m jobs.backfill``: enqueue → inference → write-cache, any subset, plus the verbs
for people. The command line itself lives in ``jobs/cli``.

Exit codes: 0 all claimed work done; 2 a user-fixable error (one ``error:`` line per problem,
nothing written); 3 finished, but posts were dead-lettered in this run; 4 the posts selection
matched no post (nothing queued); 1 an unexpected error
or a run that could not go on (rerunning is safe: nothing is lost or duplicated); 130
interrupted (claims handed back, what was labelled exported). Several integrations in one
command: the worst of their codes, in the order 0 < 4 < 3 < 130 < 2 < 1 (a line per run that
stopped early).
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Sequence

from classifiers.registry import ClassifierConfigError
from classifiers.scrub import scrub
from jobs.cli.args import build_parser, check_args
from jobs.cli.endings import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, unexpected
from jobs.cli.stages import run_command
from jobs.config import ConfigError, load_config
from jobs.stages.errors import RunStopped
from jobs.stages.preflight import PreflightErrors
from jobs.stages.ray_setup import interrupt_on_sigterm, release_ray
from queue_store import QueueFileError


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    overrides = list(args.set or []) + ([f"ray.address={args.address}"] if args.address else [])
    config = load_config(args.config, args.data_dir, overrides)
    return run_command(config, args, sys.stdout)[0]


def main(argv: Sequence[str] | None = None) -> int:
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, interrupt_on_sigterm)
    try:
        return run(argv)
    except PreflightErrors as exc:
        for problem in exc.problems:
            print(f"error: {scrub(problem)}", file=sys.stderr)
        return EXIT_USAGE
    except (ConfigError, ClassifierConfigError, QueueFileError, FileNotFoundError) as exc:
        print(f"error: {scrub(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except RunStopped as stop:
        print(f"{stop.prefix}: {scrub(stop)}", file=sys.stderr)
        if stop.cluster_lost:  # Ray's own shutdown would wait on the lost cluster: end now
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(stop.exit_code)
        return stop.exit_code
    except KeyboardInterrupt:  # outside a run's pipeline: nothing claimed to hand back
        print("interrupted: nothing was claimed; what was enqueued stays queued (each post "
              "once); rerun the same command to go on", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout closed early (| head): end quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes it at exit
        return 0
    except Exception as exc:  # noqa: BLE001 - one line for people, traceback on request
        print(f"error: {unexpected(exc)}", file=sys.stderr)
        return EXIT_FAILED


def cli() -> int:
    """The ``backfill`` command (``python -m jobs.backfill``): ``main``, then Ray let go of
    before the process exits (``release_ray``)."""
    try:
        return main()
    finally:
        release_ray()


if __name__ == "__main__":
    sys.exit(cli())
