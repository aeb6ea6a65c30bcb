"""Enqueue: validate posts and queue the new ones, deciding "new" inside the transaction."""
from __future__ import annotations

from typing import Any, Mapping

import pyarrow as pa
import pyarrow.compute as pc

from queue_store import codec
from queue_store.models import EnqueueResult, InvalidPost
from queue_store.validation import POST_COLUMNS, as_post_table, split_valid


class EnqueueVerbs:
    """Mixed into ``QueueStore``; relies on its ``tables``, ``clock`` and ``_tx``."""

    tables: dict[str, str]
    clock: Any

    def enqueue(self, posts: Any, metadata: Mapping[str, Any] | None = None,
                batch_size: int = 1000, dedupe: bool = True, version: str = "",
                relabel: bool = False) -> EnqueueResult:
        """Validate posts and queue the valid ones in rows of at most ``batch_size`` posts.

        With ``dedupe`` a post whose uri this integration has seen before is skipped: counted
        as done or queued when it was enqueued for the same ``version`` (config_hash); when it
        was enqueued only for other versions, as other-version if one of them labelled it and
        as queued if it is still waiting for them — unless ``relabel``, which queues it for
        this version too. Each queued batch records its ``version``. The decision and the
        insert are one transaction, so concurrent enqueues of the same posts queue each once
        per version.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        valid, invalid = split_valid(as_post_table(posts))
        result = EnqueueResult(invalid=[InvalidPost(uri=u, reason=r) for u, r in invalid])
        if not valid.num_rows:
            return result
        with self._tx() as c:  # type: ignore[attr-defined]
            if dedupe:
                valid = self._only_new(c, valid, result, version, relabel)
            now = self.clock()
            rows = []
            for start in range(0, valid.num_rows, batch_size):
                chunk = valid.slice(start, batch_size)
                meta = dict(metadata or {}, batch_size=batch_size,
                            actual_batch_size=chunk.num_rows)
                rows.append((_posts_json(chunk), codec.dumps(meta), chunk.num_rows, version,
                             now))
            c.executemany(f"INSERT INTO {self.tables['input']} (payload, metadata, n_posts, "
                          "version, created_at) VALUES (?, ?, ?, ?, ?)", rows)
        result.enqueued_posts = valid.num_rows
        result.enqueued_batches = len(rows)
        return result

    def _only_new(self, c: Any, valid: pa.Table, result: EnqueueResult, version: str,
                  relabel: bool) -> pa.Table:
        """Record the (uri, version) pairs to queue in the ledger; keep their posts: uris the
        integration never saw, and (when relabelling) uris seen only for other versions."""
        ledger = self.tables["ledger"]
        uris = valid.column("uri").to_pylist()  # distinct: validation rejects repeats
        new = [u for (u,) in c.execute(
            f"INSERT INTO {ledger} (uri, version) SELECT j.value, ? FROM json_each(?) AS j "
            f"WHERE NOT EXISTS (SELECT 1 FROM {ledger} AS l WHERE l.uri = j.value) "
            "ON CONFLICT DO NOTHING RETURNING uri", (version, codec.dumps(uris))).fetchall()]
        if len(new) == len(uris):
            return valid
        is_new = pc.is_in(valid.column("uri"), value_set=pa.array(new, pa.string()))
        seen = valid.filter(pc.invert(is_new)).column("uri").to_pylist()
        fold_labelled(c, self.tables)
        known: dict[str, dict[str, int]] = {}
        for uri, was, done in c.execute(f"SELECT uri, version, done FROM {ledger} WHERE uri "
                                        "IN (SELECT value FROM json_each(?))",
                                        (codec.dumps(seen),)):
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
                result.skipped_other_version += 1  # labelled by another version
            else:
                result.skipped_queued += 1  # still waiting for the version it was queued for
        if other:
            c.execute(f"INSERT INTO {ledger} (uri, version) SELECT value, ? FROM json_each(?)",
                      (version, codec.dumps(other)))
            new += other
            result.relabelled += len(other)
        return valid.filter(pc.is_in(valid.column("uri"), value_set=pa.array(new, pa.string())))


def fold_labelled(c: Any, tables: dict[str, str]) -> None:
    """Mark the (uri, version) pairs of completed batches done in the ledger, in one
    statement."""
    log = tables["labelled"]
    if c.execute(f"SELECT 1 FROM {log} LIMIT 1").fetchone() is None:
        return
    c.execute(f"UPDATE {tables['ledger']} SET done = 1 WHERE (uri, version) IN "
              f"(SELECT j.value, l.version FROM {log} AS l, json_each(l.uris) AS j)")
    c.execute(f"DELETE FROM {log}")


def _posts_json(chunk: pa.Table) -> str:
    cols = [chunk.column(c).to_pylist() for c in POST_COLUMNS]
    return codec.dumps([dict(zip(POST_COLUMNS, vals)) for vals in zip(*cols)])
