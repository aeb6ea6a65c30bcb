"""The uri ledger: every (uri, config_hash) ever enqueued for an integration, so "is this post
new?" is decided inside the enqueue transaction, and concurrent enqueues queue each post once
per version. ``done`` is set when the post's labels reach the output queue — lazily: each
completion appends its uris to a log that the next enqueue needing ``done`` folds in with one
statement (marking the ledger per batch rewrote most of its pages every time).

Functions of an open transaction's cursor; ``QueueStore`` calls them.
"""
from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from queue_store import codec
from queue_store.models import EnqueueResult


def only_new(c: Any, tables: dict[str, str], valid: pa.Table, result: EnqueueResult,
             version: str, relabel: bool) -> pa.Table:
    """Record the (uri, version) pairs to queue and keep their posts: uris the integration
    never saw, and (when relabelling) uris seen only for other versions. The rest are counted
    in ``result``: done or queued for this version, labelled by another version (other
    version), or still waiting for the version they were queued for (queued)."""
    ledger = tables["ledger"]
    uris = valid.column("uri").to_pylist()  # distinct: validation rejects repeats
    new = [u for (u,) in c.execute(
        f"INSERT INTO {ledger} (uri, version) SELECT j.value, ? FROM json_each(?) AS j "
        f"WHERE NOT EXISTS (SELECT 1 FROM {ledger} AS l WHERE l.uri = j.value) "
        "ON CONFLICT DO NOTHING RETURNING uri", (version, codec.dumps(uris))).fetchall()]
    if len(new) == len(uris):
        return valid
    is_new = pc.is_in(valid.column("uri"), value_set=pa.array(new, pa.string()))
    seen = valid.filter(pc.invert(is_new)).column("uri").to_pylist()
    fold_labelled(c, tables)
    known: dict[str, dict[str, int]] = {}
    for uri, was, done in c.execute(f"SELECT uri, version, done FROM {ledger} WHERE uri IN "
                                    "(SELECT value FROM json_each(?))", (codec.dumps(seen),)):
        known.setdefault(uri, {})[was] = done
    other = []
    for uri, versions in known.items():
        if version in versions:
            if versions[version]:
                result.skipped_done += 1
            else:
                result.skipped_queued += 1
        elif relabel:
            other.append(uri)
        elif any(versions.values()):
            result.skipped_other_version += 1
        else:
            result.skipped_queued += 1
    if other:
        c.execute(f"INSERT INTO {ledger} (uri, version) SELECT value, ? FROM json_each(?)",
                  (version, codec.dumps(other)))
        new += other
        result.relabelled += len(other)
    return valid.filter(pc.is_in(valid.column("uri"), value_set=pa.array(new, pa.string())))


def log_labelled(c: Any, tables: dict[str, str], version: str, uris: list[str]) -> None:
    """A completed batch's labelled uris, for ``fold_labelled``."""
    c.execute(f"INSERT INTO {tables['labelled']} (version, uris) VALUES (?, ?)",
              (version, codec.dumps(uris)))


def fold_labelled(c: Any, tables: dict[str, str]) -> None:
    """Mark the (uri, version) pairs of completed batches done, in one statement."""
    log = tables["labelled"]
    if c.execute(f"SELECT 1 FROM {log} LIMIT 1").fetchone() is None:
        return
    c.execute(f"UPDATE {tables['ledger']} SET done = 1 WHERE (uri, version) IN "
              f"(SELECT j.value, l.version FROM {log} AS l, json_each(l.uris) AS j)")
    c.execute(f"DELETE FROM {log}")


def not_done(c: Any, tables: dict[str, str], uri: str, version: str) -> None:
    """A labelled post whose output row could not be exported: labelled no more."""
    fold_labelled(c, tables)  # so that a later fold does not mark it done again
    c.execute(f"UPDATE {tables['ledger']} SET done = 0 WHERE uri = ? AND version = ?",
              (uri, version))
