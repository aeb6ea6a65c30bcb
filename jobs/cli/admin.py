"""Verbs for people: queue status, reaping, requeueing and showing dead letters, and the
label analyses (evaluate, report).

They replace the hand-written SQL the old tool documented; correctness never depends on them.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Callable, Iterable, TextIO

from classifiers.scrub import scrub
from jobs.config import BackfillConfig, ConfigError
from jobs.stages.preflight import check_can_ask
from queue_store import QueueStore, queue_path
from queue_store.staging import collect_garbage, staged_uris


def _no_queue(config: BackfillConfig, name: str) -> str:
    return (f"{name}: no queue at {queue_path(config.data_dir, name)} (nothing enqueued in "
            "this data_dir yet; check data_dir or --data-dir)")


def _stores(config: BackfillConfig, names: Iterable[str], missing: list[str]
            ) -> Iterable[tuple[str, QueueStore]]:
    """Open each existing queue; a missing one is noted in ``missing``, never created."""
    for name in names:
        if not queue_path(config.data_dir, name).is_file():
            missing.append(_no_queue(config, name))
            continue
        store = QueueStore(config.data_dir, name, max_attempts=config.queue.max_attempts)
        try:
            yield name, store
        finally:
            store.close()


def queue_status(config: BackfillConfig, names: list[str], as_json: bool) -> str:
    missing: list[str] = []
    statuses = {name: store.status().model_dump(exclude={"integration"})
                for name, store in _stores(config, names, missing)}
    if as_json:
        return json.dumps(statuses, sort_keys=True)
    cols = ["pending_batches", "pending_posts", "processing_batches", "processing_posts",
            "dead_posts", "dead_undecodable_rows", "output_rows_exported",
            "output_rows_unexported", "file_bytes", "ledger_bytes"]
    width = max(len(c) for c in cols)
    lines = []
    for name, st in statuses.items():
        lines.append(name)
        lines.extend(f"  {c.ljust(width)}  {st[c]}" for c in cols)
    return "\n".join(lines + missing)


def _each(config: BackfillConfig, names: list[str],
          line: Callable[[str, QueueStore], str]) -> str:
    """One line per existing queue (and one per missing one)."""
    lines: list[str] = []
    for name, store in _stores(config, names, lines):
        lines.append(line(name, store))
    return "\n".join(lines)


def reap_stale(config: BackfillConfig, names: list[str]) -> str:
    def line(name: str, store: QueueStore) -> str:
        res = store.reap()
        return (f"{name}: {res.requeued_batches} expired batch(es) back to pending, "
                f"{res.dead_lettered_batches} dead-lettered after max_attempts")
    return _each(config, names, line)


def requeue_dead(config: BackfillConfig, names: list[str]) -> str:
    def line(name: str, store: QueueStore) -> str:
        moved = store.requeue_dead(config.queue.batch_size)
        left = store.status().dead_undecodable_rows
        return (f"{name}: {moved} dead post(s) back to pending"
                + (f"; {left} undecodable row(s) stay dead" if left else ""))
    return _each(config, names, line)


def show_dead(config: BackfillConfig, names: list[str], limit: int) -> str:
    lines: list[str] = []
    for name, store in _stores(config, names, lines):
        for d in store.dead_letters(limit):
            lines.append(scrub(f"{name}\t{d.uri or '(undecodable row)'}\tattempt {d.attempt}\t"
                               f"{d.reason}"))
    return "\n".join(lines) or "no dead letters"


def clear_queues(config: BackfillConfig, names: list[str], inputs: bool, outputs: bool,
                 yes: bool, ask: TextIO, out: TextIO) -> None:
    """Say what will be deleted, ask (or take ``--yes``), then clear each queue in one
    transaction; a queue leased by a live run is refused, naming the run."""
    missing: list[str] = []
    plan = []
    for name, store in _stores(config, names, missing):
        st = store.status()
        if inputs:
            plan.append(f"{name}: input queue — {st.pending_posts + st.processing_posts} "
                        f"queued post(s), {st.dead_posts} dead letter(s)")
        if outputs:
            plan.append(f"{name}: output queue — {st.output_rows_unexported} row(s) NOT YET "
                        f"EXPORTED (their labels are lost), {st.output_rows_exported} exported "
                        "row(s) (their parquet stays)")
    print("\n".join(plan + missing), file=out)
    if not plan:
        return
    check_can_ask(yes, ask)
    if not yes:
        print("delete all of this? type yes: ", end="", file=out, flush=True)
        if ask.readline().strip().lower() != "yes":
            print("nothing was deleted", file=out)
            return
    for name, store in _stores(config, names, []):
        try:
            got = [store.clear_input()] if inputs else []
            if outputs:
                output = config.output_location(name)
                got.append(store.clear_output(staged_uris(output)))
                collect_garbage(store, output)  # the staged files of what was never published
        except ValueError as exc:  # leased by a live run, an unfinished export
            raise ConfigError(str(exc)) from None
        store.compact()
        for res in got:
            counts = ", ".join(f"{k.replace('_', ' ')} {v}"
                               for k, v in res.model_dump().items() if v)
            print(f"{name}: cleared {counts or 'nothing (the queue was empty)'}", file=out)


def compact_queue(config: BackfillConfig, names: list[str]) -> str:
    """Each queue file rewritten to its live size (refused, one line, while leased)."""
    def line(name: str, store: QueueStore) -> str:
        res = store.compact(full=True)
        return (f"{name}: queue file {_mb(res.file_bytes_before)} → "
                f"{_mb(res.file_bytes_after)} (ledger {_mb(res.ledger_bytes)} beside it)")
    return _each(config, names, line)


def compact_output(config: BackfillConfig, names: list[str]) -> str:
    """Each integration's unfinished exports finished, then its partitions compacted."""
    from queue_store import export_output
    from queue_store.compaction import compact_output as compact

    def line(name: str, store: QueueStore) -> str:
        out = config.output_location(name)
        export_output(store, out, config.pipeline.export_rows)  # finishes planned exports
        try:
            res = compact(store, out, config.pipeline.compact_rows)
        except ValueError as exc:  # busy, or an object store: one line
            raise ConfigError(str(exc)) from None
        return (f"{name}: {res.partitions} partition(s) compacted, {res.files_before} "
                f"file(s) → {res.files_after} ({res.rows:,} rows)")
    return _each(config, names, line)


def rebuild_ledger(config: BackfillConfig, names: list[str]) -> str:
    """Each queue's enqueue ledger written anew from its queue file and parquet output."""
    from jobs.stages.enqueue import rebuild_ledger as rebuild

    def line(name: str, store: QueueStore) -> str:
        entries = rebuild(store, config.output_location(name))
        return (f"{name}: ledger rebuilt from the queue file and the output: {entries:,} "
                f"(post, config_hash) entries ({_mb(store.ledger.bytes_on_disk())})")
    return _each(config, names, line)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def integration_names(config: BackfillConfig, wanted: list[str]) -> list[str]:
    """``-i`` values (codes or names, ``all`` or none for every integration) as names."""
    if not wanted or "all" in wanted:
        return list(config.integrations)
    return list(dict.fromkeys(config.resolve_integration(w)[0] for w in wanted))


def run_verbs(config: BackfillConfig, args: Any, out: TextIO) -> None:
    """The verbs for people (status, reap, requeue, dead letters) and the label analyses
    (evaluate, report) a command asked for, each printing its answer."""
    names = integration_names(config, args.integration)
    if args.queue_status:
        print(queue_status(config, names, args.json), file=out)
    if args.reap_stale:
        print(reap_stale(config, names), file=out)
    if args.requeue_dead:
        print(requeue_dead(config, names), file=out)
    if args.show_dead:
        print(show_dead(config, names, args.show_dead), file=out)
    if args.clear_input_queues or args.clear_output_queues:
        clear_queues(config, names, args.clear_input_queues, args.clear_output_queues,
                     args.yes, sys.stdin, out)
    if args.compact_output:
        print(compact_output(config, integration_names(config, [args.compact_output])),
              file=out)
    if args.compact_queue:
        print(compact_queue(config, names), file=out)
    if args.rebuild_ledger:
        print(rebuild_ledger(config, names), file=out)
    if args.evaluate:
        from jobs.labels.evaluation import evaluate

        if len(names) != 1:
            raise ConfigError("--evaluate needs one integration: add -i CODE")
        print(evaluate(config, names[0], args.evaluate, args.gold_column,
                       args.config_hash).text(), file=out)
    if args.sample_for_annotation:
        from jobs.labels.annotation import sample_for_annotation

        if len(names) != 1:
            raise ConfigError("--sample-for-annotation needs one integration: add -i CODE")
        got = sample_for_annotation(config, names[0], args.sample_for_annotation, args.seed,
                                    args.config_hash)
        print(f"annotation sample: {got.posts} of {got.population} labelled posts "
              f"(config_hash {got.config_hash or '-'})\n  {got.csv}\n  {got.html}\n"
              "fill its gold column, then: --evaluate CSV --gold-column gold -i "
              f"{names[0]}", file=out)
    if args.report:
        from jobs.labels.report import write_report

        for name in integration_names(config, [args.report]):
            print(f"report: {write_report(config, name, args.config_hash)}", file=out)
