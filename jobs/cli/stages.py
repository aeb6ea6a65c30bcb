"""The stages a command asked for, in order — enqueue → inference → write-cache — for each
integration, after one preflight of all of them."""
from __future__ import annotations

import functools
import sys
from datetime import date, datetime, timezone
from typing import Any, TextIO

from jobs.cli.admin import integration_names
from jobs.cli.endings import (EXIT_FAILED, EXIT_NOTHING_SELECTED, EXIT_OK, Summaries,
                              closing_lines, summary_of, unexpected, worst)
from jobs.config import BackfillConfig, ConfigError
from jobs.posts.selection import Selection
from jobs.stages.errors import RunStopped
from jobs.stages.preflight import check_stages


def run_command(config: BackfillConfig, args: Any, out: TextIO) -> tuple[int, list[Any]]:
    """What a parsed command line does with its config: its exit code and the summaries of
    the stages it ran (errors and early stops raise): the CLI's, and ``jobs.api.run``'s."""
    from jobs.cli import admin
    from jobs.stages.ray_setup import prefer_offline

    start, end = date_range(args, config)
    prefer_offline()
    admin.run_verbs(config, args, out)
    if not (args.add_to_queue or args.run_integrations or args.write_cache):
        return 0, []
    report = Summaries(out)
    stopped = run_stages(config, args, start, end, report)
    return worst(stopped, closing_lines(report.done, args.max_records_per_run)), report.done


def date_range(args: Any, config: BackfillConfig) -> tuple[date | None, date | None]:
    if args.backfill_period:  # the last N days/hours: from that day's partition on
        return selection_of(args).since.date(), None
    start = args.start_date or config.posts.start_date
    end = args.end_date or config.posts.end_date
    if start and end and start > end:
        raise ConfigError(f"start date {start} is after end date {end} "
                          "(--start-date/--end-date, or posts.start_date/end_date in the config)")
    return start, end


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
        if args.add_to_queue and args.backfill_period:
            print(f"window: {_window(args)}", file=sys.stderr)
    stopped = EXIT_OK
    # One read of the posts feeds every integration's queue; their runs go side by side.
    enqueued: list[Any] = []  # the enqueue's summaries, one per integration, once it ended
    enqueue = functools.partial(_enqueue, config, integrations, files, feeds, args, report,
                                enqueued)
    if args.run_integrations:
        stopped = _infer(config, integrations, args, report,
                         enqueue if args.add_to_queue else None,
                         files.good_rows if args.add_to_queue and files is not None else None)
    elif args.add_to_queue:
        enqueue()
    if args.add_to_queue and files is not None and enqueued and not any(
            s.rows_read - s.outside_window - s.sampled_out for s in enqueued):
        print(f"enqueue: {_nothing_matched(config, files, args, start, end, enqueued[0])} "
              f"(exit {EXIT_NOTHING_SELECTED})", file=sys.stderr)
        stopped = worst(stopped, EXIT_NOTHING_SELECTED)
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


def _window(args: Any) -> str:
    """A relative window in words: it ends now, and the range it covers."""
    since, now = selection_of(args).since, args.now
    return (f"the last {args.backfill_duration} {args.backfill_period}, ending now: "
            f"{since:%Y-%m-%d %H:%M} to {now:%Y-%m-%d %H:%M} UTC (by each post's own "
            "timestamp)")


def _nothing_matched(config: BackfillConfig, files: Any, args: Any, start: date | None,
                     end: date | None, summary: Any) -> str:
    """What was asked for, what it found, and the days the posts cover."""
    if args.backfill_period:
        asked = _window(args)
    elif start and end:
        asked = f"the days {start} to {end}"
    elif start or end:
        asked = f"the days from {start} on" if start else f"the days up to {end}"
    else:
        asked = "every day"
    if args.sample_records:
        asked += f", a {args.sample_proportion:g} sample"
    found = []
    if summary.outside_window:
        found.append(f"{summary.outside_window} outside the window")
    if summary.sampled_out:
        found.append(f"{summary.sampled_out} sampled out")
    read = f" ({summary.rows_read} read: {', '.join(found)})" if found else ""
    if files.first_day is None:
        have = (f"there are no partition_date=YYYY-MM-DD folders of posts files under "
                f"{config.posts.path}")
    else:
        have = (f"the posts under {config.posts.path} are dated {files.first_day} to "
                f"{files.last_day}")
    return f"no post matched {asked}{read}; {have}"


def _enqueue(config: BackfillConfig, names: list[str], files: Any, feeds: Any, args: Any,
             report: Summaries, enqueued: list[Any]) -> None:
    """One read of the posts for every integration's queue; their summaries go to
    ``enqueued``."""
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
    enqueued.extend(summaries)


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
