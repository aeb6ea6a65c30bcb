"""The stages a command asked for, in order — enqueue → inference → write-cache — for each
integration, after one preflight of all of them."""
from __future__ import annotations

import functools
import sys
from datetime import date, datetime, timezone
from typing import Any

from jobs.cli.admin import integration_names
from jobs.cli.endings import Summaries
from jobs.config import BackfillConfig
from jobs.posts.selection import Selection
from jobs.stages.errors import RunStopped
from jobs.stages.preflight import check_stages


def run_stages(config: BackfillConfig, args: Any, start: date | None, end: date | None,
               report: Summaries) -> None:
    # No -i: every integration of the config (one after another).
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
    for name in integrations:
        enqueue = functools.partial(_enqueue, config, name, files, feeds, args, report)
        if args.run_integrations:
            _infer(config, name, args, report, enqueue if args.add_to_queue else None,
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


def _infer(config: BackfillConfig, name: str, args: Any, report: Summaries,
           feed: Any, feed_posts: int | None) -> None:
    """One command doing both enqueue and inference: the pipeline starts (and loads the
    model) while the enqueue runs, instead of after it."""
    from jobs.stages.inference import run_inference

    try:
        report(run_inference(config, name, args.max_records_per_run, quiet=args.quiet,
                             verbose=args.verbose, feed=feed, feed_posts=feed_posts))
    except RunStopped as stop:  # the partial summary, then the stop's one line
        if stop.summary is not None:
            report(stop.summary)
        raise


def _enqueue(config: BackfillConfig, name: str, files: Any, feeds: Any, args: Any,
             report: Summaries) -> None:
    from jobs.stages.enqueue import enqueue_posts

    batches = None
    if feeds is not None:  # -r posts_used_in_feeds
        from jobs.posts.feeds import served_posts

        batches = served_posts(config, feeds, files, config.posts.read_batch_rows)
    summary = enqueue_posts(config, name, files, quiet=args.quiet,
                            relabel=args.relabel_other_versions, selection=selection_of(args),
                            batches=batches)
    if feeds is not None:
        summary.feed_days = len(feeds.files)
        summary.missing_feed_days = len(feeds.missing)
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
