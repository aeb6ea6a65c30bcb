"""Command-line flags (the old tool's, with the same meaning) and their validation."""
from __future__ import annotations

import argparse
from datetime import date

from jobs.config import ConfigError


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date like 2024-10-01") from None


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive whole number")
    return n


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{message} (see --help)")


EXAMPLES = """examples:
  # everything in one command, on a laptop (a local Ray is started)
  python -m jobs.backfill --config configs/demo.yaml -r posts --add-to-queue -i g \\
      --run-integrations --write-cache all
  # stage by stage
  python -m jobs.backfill --config configs/intergroup.yaml -r posts --add-to-queue -i g \\
      --start-date 2024-10-01 --end-date 2024-10-07
  python -m jobs.backfill --config configs/intergroup.yaml -i g --run-integrations
  python -m jobs.backfill --config configs/intergroup.yaml --write-cache all --clear-queue
  # every integration of the config (no -i): one read of the posts, the runs side by side
  python -m jobs.backfill --config configs/demo.yaml --set \
      'integrations.ml_inference_valence={code: v, classifier: {type: vader}, num_cpus: 0.5}' \
      -r posts --add-to-queue --run-integrations --write-cache all
  # which posts: a 10 % sample, the last 6 hours, or only posts shown in feeds
  python -m jobs.backfill --config configs/demo.yaml -r posts --add-to-queue \\
      --sample-records --sample-proportion 0.1
  python -m jobs.backfill --config configs/demo.yaml -r posts --add-to-queue \\
      --backfill-period hours --backfill-duration 6
  python -m jobs.backfill --config configs/demo.yaml -r posts_used_in_feeds --add-to-queue \\
      --set feeds.path=$PWD/demo_data/feeds   # python -m jobs.tools.demo_data --feeds ...
  # hand labels: a stratified sample to annotate, then evaluate against it
  python -m jobs.backfill --config configs/demo.yaml -i g --sample-for-annotation 200
  python -m jobs.backfill --config configs/demo.yaml -i g --evaluate FILLED.csv \\
      --gold-column gold
  # housekeeping: clear queues (asks first), compact the output and the queue file
  python -m jobs.backfill --config configs/demo.yaml -i g --clear-input-queues --yes
  python -m jobs.backfill --config configs/demo.yaml --compact-output all --compact-queue
  python -m jobs.backfill --config configs/demo.yaml -i g --rebuild-ledger   # a damaged ledger
  # on a cluster (run from the project folder; data paths absolute or shared)
  ray job submit --working-dir . -- python -m jobs.backfill \\
      --config configs/intergroup.yaml -r posts --add-to-queue -i g --run-integrations

exit codes:
  0  all claimed work done
  2  a user-fixable error (one 'error:' line; nothing was written)
  3  finished, but posts were dead-lettered in this run (see --show-dead N)
  4  the posts selection (days, window, sample) matched no post: nothing was queued (the
     line names the days the posts cover)
  1  unexpected error (rerunning is safe: nothing is lost or duplicated)
  130 interrupted (Ctrl-C or SIGTERM): this run's claims were handed back
  several integrations: the worst of theirs (0 < 4 < 3 < 130 < 2 < 1), a line per one that stopped
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                     argparse.RawDescriptionHelpFormatter):
    """Defaults after each flag, and the examples kept as written."""


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog="backfill", description="Backfill ML labels for posts, exactly once.",
                       epilog=EXAMPLES, formatter_class=_HelpFormatter)
    p.add_argument("--config", default="configs/demo.yaml", help="YAML job config")
    p.add_argument("--data-dir", help="overrides data_dir (also env BACKFILL_DATA_DIR)")
    p.add_argument("--set", action="append", metavar="KEY.PATH=VALUE",
                   help="override one config value without copying the file (repeatable), "
                        "e.g. --set integrations.NAME.classifier.params.base_url="
                        "http://localhost:8000/v1")
    p.add_argument("--address", help="join this running Ray cluster (host:port or auto); "
                   "without it, or RAY_ADDRESS, the job starts its own local Ray")
    p.add_argument("-r", "--record-type", choices=["posts", "posts_used_in_feeds"],
                   help="records to enqueue: every post, or only posts served in study users' "
                        "feeds (feeds: in the config)")
    p.add_argument("--add-to-queue", action="store_true", help="stage 1: enqueue posts")
    p.add_argument("-i", "--integration", action="append", default=[],
                   help="integration code or name (repeatable); none: every integration of "
                   "the config, with one read of the posts and the runs side by side")
    p.add_argument("--run-integrations", action="store_true", help="stages 2-3: inference")
    p.add_argument("--write-cache", metavar="NAME|all", help="stage 4: output queue → parquet")
    p.add_argument("--clear-queue", action="store_true",
                   help="with --write-cache: delete exported output rows")
    p.add_argument("--start-date", type=_day, help="first partition_date (inclusive)")
    p.add_argument("--end-date", type=_day, help="last partition_date (inclusive)")
    p.add_argument("--sample-records", action="store_true",
                   help="with --add-to-queue: enqueue a reproducible sample (by uri) of the "
                        "posts; needs --sample-proportion")
    p.add_argument("--sample-proportion", type=float, metavar="P",
                   help="with --sample-records: keep this share of posts, 0 < P <= 1 (the same "
                        "posts for every integration and rerun; a larger P keeps a superset)")
    p.add_argument("--sample-seed", type=int, default=0, metavar="S",
                   help="with --sample-records: another seed draws another sample (default 0)")
    p.add_argument("--backfill-period", choices=["days", "hours"],
                   help="with --add-to-queue: only posts of the last N days or hours (by the "
                        "post's own timestamp); needs --backfill-duration N")
    p.add_argument("--backfill-duration", type=_positive, metavar="N",
                   help="with --backfill-period: how many days or hours back")
    p.add_argument("--max-records-per-run", type=_positive, help="claim at most N posts "
                   "(whole batches)")
    p.add_argument("--queue-status", action="store_true", help="counts per queue state")
    p.add_argument("--json", action="store_true", help="with --queue-status: one JSON object")
    p.add_argument("--reap-stale", action="store_true", help="expired leases back to pending")
    p.add_argument("--requeue-dead", action="store_true", help="dead posts back to pending")
    p.add_argument("--show-dead", type=_positive, metavar="N", help="list N dead letters")
    p.add_argument("--clear-input-queues", action="store_true",
                   help="delete the -i integrations' (default: all) queued batches and dead "
                        "letters (their posts may be queued again); asks first")
    p.add_argument("--clear-output-queues", action="store_true",
                   help="delete their output rows, exported or not (unexported labels are "
                        "lost; their posts may be queued again); asks first")
    p.add_argument("--bypass-write", action="store_true",
                   help="with --write-cache NAME|all --clear-queue: clear the output rows without "
                        "writing them; asks first")
    p.add_argument("--yes", action="store_true",
                   help="answer yes to the clearing question (scripts; needed without a "
                        "terminal)")
    p.add_argument("--compact-output", metavar="NAME|all",
                   help="rewrite each partition's small parquet files into files of "
                        "pipeline.compact_rows rows, swapped in atomically (local output "
                        "only; refused while a run holds leases)")
    p.add_argument("--compact-queue", action="store_true",
                   help="rewrite each queue file to its live size (VACUUM); refused while a "
                        "run holds leases")
    p.add_argument("--rebuild-ledger", action="store_true",
                   help="write the -i integrations' (default: all) enqueue ledgers anew from "
                        "their queue files and parquet output (after a 'ledger run … is "
                        "damaged' error); waits for enqueues, runs may go on")
    p.add_argument("--classifier-later", action="store_true",
                   help="with --add-to-queue and no --run-integrations: queue although the "
                        "classifier cannot be built yet (its model, a file or its API key "
                        "comes later); the first run with them in place labels those posts")
    p.add_argument("--relabel-other-versions", action="store_true",
                   help="with --add-to-queue: also enqueue posts queued or labelled by another "
                        "config_hash (their old rows stay, told apart by config_hash)")
    p.add_argument("--evaluate", metavar="GOLD",
                   help="labels of -i INTEGRATION against a gold CSV/parquet (uri + label)")
    p.add_argument("--sample-for-annotation", type=_positive, metavar="N",
                   help="with -i INTEGRATION: a CSV (and an HTML page) of N labelled posts to "
                        "label by hand, stratified by predicted label and confidence (least "
                        "certain over-represented, weights written), with an empty gold column")
    p.add_argument("--seed", type=int, default=0,
                   help="with --sample-for-annotation: another seed draws another sample")
    p.add_argument("--gold-column", default="label", help="with --evaluate: the gold label column")
    p.add_argument("--report", metavar="NAME|all",
                   help="write <data_dir>/reports/<integration>.html about the labels")
    p.add_argument("--config-hash", metavar="HASH",
                   help="with --evaluate/--report: that version of the labels (default: latest)")
    p.add_argument("--skip-bad-files", action="store_true",
                   help="with --add-to-queue: enqueue around unreadable posts files "
                        "(counted in the summary) instead of stopping")
    p.add_argument("--quiet", action="store_true",
                   help="no progress display: only the summaries and errors")
    p.add_argument("--verbose", action="store_true",
                   help="also Ray's own log lines and Ray Data's progress bars")
    return p


def check_args(args: argparse.Namespace) -> None:
    stages = args.add_to_queue or args.run_integrations or args.write_cache
    admin = (args.queue_status or args.reap_stale or args.requeue_dead or args.show_dead
             or args.compact_queue or args.compact_output or args.evaluate or args.report
             or args.sample_for_annotation or args.clear_input_queues
             or args.clear_output_queues or args.rebuild_ledger)
    if not stages and not admin:
        raise ConfigError("nothing to do: give --add-to-queue, --run-integrations, "
                          "--write-cache or an admin flag such as --queue-status")
    if args.add_to_queue and args.record_type not in ("posts", "posts_used_in_feeds"):
        raise ConfigError("--add-to-queue needs -r posts or -r posts_used_in_feeds")
    if args.relabel_other_versions and not args.add_to_queue:
        raise ConfigError("--relabel-other-versions only goes with --add-to-queue")
    if args.classifier_later and (args.run_integrations or not args.add_to_queue):
        raise ConfigError("--classifier-later only goes with --add-to-queue, without "
                          "--run-integrations (a run needs its classifier now)")
    _check_selection(args)
    if args.bypass_write and not (args.write_cache and args.clear_queue):
        raise ConfigError("--bypass-write only goes with --write-cache NAME|all --clear-queue")
    if args.yes and not (args.clear_input_queues or args.clear_output_queues
                         or args.bypass_write):
        raise ConfigError("--yes only goes with --clear-input-queues, --clear-output-queues "
                          "or --bypass-write")
    if args.clear_queue and not args.write_cache:
        raise ConfigError("--clear-queue only goes with --write-cache NAME|all")
    if args.config_hash and not (args.evaluate or args.report or args.sample_for_annotation):
        raise ConfigError("--config-hash only goes with --evaluate, --report or "
                          "--sample-for-annotation")
    if args.json and not args.queue_status:
        raise ConfigError("--json only goes with --queue-status")


def _check_selection(args: argparse.Namespace) -> None:
    """Sampling and relative windows: only with --add-to-queue, and only whole."""
    sampling = args.sample_records or args.sample_proportion is not None
    window = args.backfill_period or args.backfill_duration
    if (sampling or window) and not args.add_to_queue:
        raise ConfigError("sampling and --backfill-period only go with --add-to-queue")
    if args.sample_records and args.sample_proportion is None:
        raise ConfigError("--sample-records needs --sample-proportion P (0 < P <= 1)")
    if args.sample_proportion is not None and not args.sample_records:
        raise ConfigError("--sample-proportion only goes with --sample-records")
    if args.sample_proportion is not None and not 0 < args.sample_proportion <= 1:
        raise ConfigError(f"--sample-proportion {args.sample_proportion:g} is outside (0, 1]")
    if bool(args.backfill_period) != bool(args.backfill_duration):
        raise ConfigError("--backfill-period days|hours and --backfill-duration N go together")
    if window and (args.start_date or args.end_date):
        raise ConfigError("--backfill-period selects its own dates: drop --start-date/"
                          "--end-date, or drop the period")
