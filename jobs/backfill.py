"""``python -m jobs.backfill``: enqueue → inference → write-cache, any subset, plus admin verbs.

Exit codes: 0 all claimed work done; 2 a user-fixable error (one ``error:`` line, nothing
written); 3 finished, but posts were dead-lettered in this run; 1 an unexpected error
(rerunning is safe: nothing is lost or duplicated); 130 interrupted (claims handed back).
"""
from __future__ import annotations

import functools
import os
import signal
import sys
import traceback
from typing import Any, Callable, Sequence

from classifiers.registry import ClassifierConfigError
from classifiers.scrub import scrub
from jobs import admin
from jobs.cli_args import build_parser, check_args
from jobs.config import BackfillConfig, ConfigError, load_config
from jobs.pipeline_errors import RunStopped
from jobs.preflight import PreflightErrors, check_stages
from jobs.ray_setup import interrupt_on_sigterm, prefer_offline
from jobs.summary import RunSummary
from queue_store.schema import QueueFileError

EXIT_USAGE = 2
EXIT_DEAD_LETTERED = 3


def _names(config: BackfillConfig, wanted: Sequence[str]) -> list[str]:
    if not wanted or "all" in wanted:
        return list(config.integrations)
    return list(dict.fromkeys(config.resolve_integration(w)[0] for w in wanted))


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    overrides = list(args.set or [])
    if args.address:
        overrides.append(f"ray.address={args.address}")
    config = load_config(args.config, args.data_dir, overrides)
    start = args.start_date or config.posts.start_date
    end = args.end_date or config.posts.end_date
    if start and end and start > end:
        raise ConfigError(f"start date {start} is after end date {end} "
                          "(--start-date/--end-date, or posts.start_date/end_date in the config)")
    prefer_offline()
    out = sys.stdout
    if args.queue_status:
        print(admin.queue_status(config, _names(config, args.integration), args.json), file=out)
    if args.reap_stale:
        print(admin.reap_stale(config, _names(config, args.integration)), file=out)
    if args.requeue_dead:
        print(admin.requeue_dead(config, _names(config, args.integration)), file=out)
    if args.show_dead:
        print(admin.show_dead(config, _names(config, args.integration), args.show_dead), file=out)
    if args.evaluate:
        from jobs.evaluation import evaluate

        names = _names(config, args.integration)
        if len(names) != 1:
            raise ConfigError("--evaluate needs one integration: add -i CODE")
        print(evaluate(config, names[0], args.evaluate, args.gold_column,
                       args.config_hash).text(), file=out)
    if args.report:
        from jobs.report import write_report

        for name in _names(config, [args.report]):
            print(f"report: {write_report(config, name, args.config_hash)}", file=out)
    integrations = _names(config, args.integration) if args.integration else []
    cache_names = _names(config, [args.write_cache]) if args.write_cache else []
    if not (args.add_to_queue or args.run_integrations or args.write_cache):
        return 0
    # Everything the stages need is checked before any of them writes anything.
    files = check_stages(config, args, integrations, cache_names, start, end)
    if not args.quiet:
        print(f"data: {config.data_dir}\nposts: {config.posts.path}\n"
              f"output: {config.output_root}", file=sys.stderr)
    summaries: list[RunSummary] = []

    def done(summary: RunSummary) -> None:  # each stage's summary as soon as it ends
        summaries.append(summary)
        print(f"\n{summary.stage}: {summary.integration}", file=out)
        print(summary.table(), file=out, flush=True)

    for name in integrations:
        enqueue = functools.partial(_enqueue, config, name, files, args, done)
        if args.run_integrations:
            from jobs.inference import run_inference

            # One command doing both: the pipeline starts (and loads the model) while the
            # enqueue runs, instead of after it.
            try:
                done(run_inference(config, name, args.max_records_per_run, quiet=args.quiet,
                                   verbose=args.verbose,
                                   feed=enqueue if args.add_to_queue else None))
            except RunStopped as stop:  # the partial summary, then the stop's one line
                if stop.summary is not None:
                    done(stop.summary)
                raise
        elif args.add_to_queue:
            enqueue()
    if args.add_to_queue and files is not None and not files.good and not files.rejected:
        span = f"between {start or 'the first'} and {end or 'the last'} day"
        print(f"enqueue: no posts under {config.posts.path} {span} (check the date "
              "range and posts.path)", file=sys.stderr)
    if args.write_cache:
        from jobs.inference import write_cache

        for name in cache_names:
            done(write_cache(config, name, clear_queue=args.clear_queue))
    return _closing_lines(summaries, args.max_records_per_run)


def _enqueue(config: Any, name: str, files: Any, args: Any,
             done: Callable[[RunSummary], None]) -> None:
    from jobs.enqueue_stage import enqueue_posts

    done(enqueue_posts(config, name, files, quiet=args.quiet,
                       relabel=args.relabel_other_versions))


def _closing_lines(summaries: list[RunSummary], budget: int | None) -> int:
    """One line per thing left undone, and the exit code that goes with it."""
    dead = 0
    for s in summaries:
        if s.stage == "enqueue" and s.skipped_other_version:
            print(f"{s.integration}: {s.skipped_other_version} post(s) were labelled by another "
                  f"version of this integration's config (this one is config_hash "
                  f"{s.config_hash}); add --relabel-other-versions to label them again (the "
                  "old rows stay, told apart by config_hash)", file=sys.stderr)
        if s.stage != "inference":
            continue
        dead += s.dead_lettered + s.export_dead_lettered
        if s.pending_left and budget:
            print(f"{s.integration}: {s.pending_left} post(s) still pending "
                  f"(--max-records-per-run {budget}); rerun to continue", file=sys.stderr)
        if s.leased_elsewhere:
            print(f"{s.integration}: {s.leased_elsewhere} post(s) are leased by another run "
                  f"(live, or on another host); the leases expire in "
                  f"{s.leases_expire_in_s:g} s unless that run keeps them, then a rerun "
                  "takes them", file=sys.stderr)
        if s.pending_other_versions:
            print(f"{s.integration}: {s.pending_other_versions} post(s) are queued for another "
                  "version of this integration's config (another config_hash), so this run "
                  "left them; label them with that config, or queue them for this one with "
                  "--add-to-queue --relabel-other-versions", file=sys.stderr)
        if s.stopped_claiming and "interrupted" not in s.stopped_claiming:
            print(f"{s.integration}: {s.stopped_claiming}", file=sys.stderr)
    if dead:
        print(f"finished, but {dead} post(s) were dead-lettered in this run: see them with "
              "--show-dead N, relabel them with --requeue-dead", file=sys.stderr)
        return EXIT_DEAD_LETTERED
    return 0


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
    except KeyboardInterrupt:
        print("interrupted: this run's claims were handed back; rerun the same command to "
              "finish", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed early (| head): end quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes it at exit
        return 0
    except Exception as exc:  # noqa: BLE001 - one line for people, traceback on request
        if os.environ.get("BACKFILL_DEBUG"):
            traceback.print_exc()
        text = scrub(str(exc).splitlines()[0]) if str(exc) else ""
        print(f"error: {type(exc).__name__}: {text} (set BACKFILL_DEBUG=1 for the traceback; "
              "rerunning is safe: nothing is lost or duplicated)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
