"""``python -m jobs.backfill``: enqueue → inference → write-cache, any subset, plus admin verbs.

Errors a user can fix print one line and exit 2; a rerun always finishes what a failed or
killed run left (leases expire, exports resume).
"""
from __future__ import annotations

import os
import sys
import traceback
from typing import Sequence

from classifiers.registry import ClassifierConfigError, preflight
from jobs import admin
from jobs.cli_args import build_parser, check_args
from jobs.config import BackfillConfig, ConfigError, load_config

EXIT_USAGE = 2


def _names(config: BackfillConfig, wanted: Sequence[str]) -> list[str]:
    if not wanted or "all" in wanted:
        return list(config.integrations)
    return list(dict.fromkeys(config.resolve_integration(w)[0] for w in wanted))


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    config = load_config(args.config, args.data_dir)
    start = args.start_date or config.posts.start_date
    end = args.end_date or config.posts.end_date
    if start and end and start > end:
        raise ConfigError(f"start date {start} is after end date {end} "
                          "(--start-date/--end-date, or posts.start_date/end_date in the config)")
    out = sys.stdout
    if args.queue_status:
        print(admin.queue_status(config, _names(config, args.integration), args.json), file=out)
    if args.reap_stale:
        print(admin.reap_stale(config, _names(config, args.integration)), file=out)
    if args.requeue_dead:
        print(admin.requeue_dead(config, _names(config, args.integration)), file=out)
    if args.show_dead:
        print(admin.show_dead(config, _names(config, args.integration), args.show_dead), file=out)
    integrations = _names(config, args.integration) if args.integration else []
    cache_names = _names(config, [args.write_cache]) if args.write_cache else []
    if args.run_integrations:  # fail before any stage runs, not after enqueueing
        for name in integrations:
            clf = config.integrations[name].classifier
            preflight(clf.type, clf.params)
    summaries = []
    if args.add_to_queue:
        from jobs.enqueue_stage import enqueue_posts
        from jobs.posts_source import find_post_files

        files = find_post_files(config.posts.path, start, end)
        if files.bad and not args.skip_bad_files:  # before anything is enqueued
            raise ConfigError(files.bad_files_message())
        for name in integrations:
            summaries.append(enqueue_posts(config, name, files, quiet=args.quiet))
    if args.run_integrations:
        from jobs.inference import run_inference

        for name in integrations:
            summaries.append(run_inference(config, name, args.max_records_per_run,
                                           quiet=args.quiet))
    if args.write_cache:
        from jobs.inference import write_cache

        for name in cache_names:
            summaries.append(write_cache(config, name, clear_queue=args.clear_queue))
    for summary in summaries:
        print(f"\n{summary.stage}: {summary.integration}", file=out)
        print(summary.table(), file=out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(argv)
    except (ConfigError, ClassifierConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: leases expire on their own; rerun the same command to finish",
              file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line for people, traceback on request
        if os.environ.get("BACKFILL_DEBUG"):
            traceback.print_exc()
        print(f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
              "(set BACKFILL_DEBUG=1 for the traceback; rerunning finishes the work)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
