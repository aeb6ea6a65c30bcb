"""The stages a command asked for, in order — enqueue → inference → write-cache — for each
integration, after one preflight of all of them."""
from __future__ import annotations

import functools
import sys
from datetime import date, datetime, timezone
from typing import Any

from jobs.cli.admin import integration_names
from jobs.cli.endings import EXIT_FAILED, EXIT_OK, Summaries, summary_of, unexpected, worst
from jobs.config import BackfillConfig
from jobs.posts.selection import Selection
from jobs.stages.errors import RunStopped
from jobs.stages.preflight import check_stages


def run_stages(config: BackfillConfig, args: Any, start: date | None, end: date | None,
               report: Summaries) -> int:
    """Run the stages; returns the exit code of integrations that stopped early (0: none).
    One integration's early stop is raised as it is."""
    # No -i: every integration of the config.
    integrations = integration_names(config, args.integration) \
        if args.add_to_queue or args.run_integrations else []
    cache_names = integration_names(config, [args.write_cache]) if args.write_cache else []
    # Everything the stages need is checked before any of them writes anything.
    files, feeds = check_stages(config, args, integrations, cache_names, start, end)
    if feeds is not None and feeds.missing:
        shown = ", ".join(d.isoformat() for d in feeds.missing[:10])
        more = f" (and {len(feeds.missing) - 10} more)" if len(feeds.missing) > 10 else ""
        print(f"feeds: {len(feeds.missing)} day(s) of the range have no feed files under "
              f"{feeds.where.uri}: {shown}{more}", file=sys.stderr)
    if not args.quiet:
        print(f"data: {config.data_dir}\nposts: {config.posts.path}\n"
              f"output: {config.output_base}", file=sys.stderr)
    stopped = EXIT_OK
    # One read of the posts feeds every integration's queue; their runs go side by side.
    enqueue = functools.partial(_enqueue, config, integrations, files, feeds, args, report)
    if args.run_integrations:
        stopped = _infer(config, integrations, args, report,
                         enqueue if args.add_to_queue else None,
                         files.good_rows if args.add_to_queue and files is not None else None)
    elif args.add_to_queue:
        enqueue()
    if args.add_to_queue and files is not None and not files.good and not files.rejected:
        span = f"between {start or 'the first'} and {end or 'the last'} day"
        print(f"enqueue: no posts under {config.posts.path} {span} (check the date range and "
              "posts.path)", file=sys.stderr)
    if args.write_cache and args.bypass_write:  # clear without writing (asks first)
        from jobs.cli.admin import clear_queues

        clear_queues(config, cache_names, False, True, args.yes, sys.stdin, sys.stdout)
    elif args.write_cache:
        from jobs.stages.write_cache import write_cache

        for name in cache_names:
            report(write_cache(config, name, clear_queue=args.clear_queue))
    return stopped


def _infer(config: BackfillConfig, names: list[str], args: Any, report: Summaries,
           feed: Any, feed_posts: int | None) -> int:
    """The integrations' runs, side by side (with the same command's enqueue feeding them:
    the pipelines start, and load their models, while it runs). Each summary is printed as
    its run ends; with several, one table of all, then a line per run that stopped early."""
    from jobs.stages.inference import run_integrations

    def ended(name: str, outcome: Any) -> None:
        summary = summary_of(outcome)
        if summary is not None:
            report(summary)

    outcomes = run_integrations(config, names, args.max_records_per_run, quiet=args.quiet,
                                verbose=args.verbose, feed=feed, feed_posts=feed_posts,
                                on_end=ended)
    stops = [(name, o) for name, o in zip(names, outcomes) if isinstance(o, BaseException)]
    if len(names) == 1:
        if stops:
            raise stops[0][1]
        return EXIT_OK
    report.combined(names, dict(zip(names, outcomes)))
    code = EXIT_OK
    lost = None
    for name, stop in stops:
        if isinstance(stop, RunStopped) and stop.cluster_lost:
            lost = lost or (name, stop)  # said last, by the CLI, which then ends at once
            code = worst(code, stop.exit_code)
        elif isinstance(stop, RunStopped):
            print(f"{stop.prefix}: {name}: {stop}", file=sys.stderr)
            code = worst(code, stop.exit_code)
        else:
            print(f"error: {name}: {unexpected(stop)}", file=sys.stderr)
            code = worst(code, EXIT_FAILED)
    if lost:  # Ray's own shutdown would wait on the lost cluster
        raise RunStopped(f"{lost[0]}: {lost[1]}", code, prefix=lost[1].prefix,
                         cluster_lost=True)
    return code


def _enqueue(config: BackfillConfig, names: list[str], files: Any, feeds: Any, args: Any,
             report: Summaries) -> None:
    """One read of the posts for every integration's queue."""
    from jobs.stages.enqueue import enqueue_posts

    batches = None
    if feeds is not None:  # -r posts_used_in_feeds
        from jobs.posts.feeds import served_posts

        batches = served_posts(config, feeds, files, config.posts.read_batch_rows)
    summaries = enqueue_posts(config, names, files, quiet=args.quiet,
                              relabel=args.relabel_other_versions,
                              selection=selection_of(args), batches=batches)
    for summary in summaries:
        if feeds is not None:
            summary.feed_days = len(feeds.files)
            summary.missing_feed_days = len(feeds.missing)
            summary.save(config.data_dir)
        report(summary)


def selection_of(args: Any) -> Selection:
    """The sample and window a command asked for (nothing: every post). The window ends at
    the command's ``args.now`` (set once: every integration's window is the same)."""
    sample = {"sample_proportion": args.sample_proportion, "sample_seed": args.sample_seed}
    if args.backfill_period:
        if getattr(args, "now", None) is None:
            args.now = datetime.now(timezone.utc)
        return Selection.window(args.backfill_period, args.backfill_duration, args.now,
                                **sample)
    return Selection(**sample)
