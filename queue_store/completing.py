"""The fenced acks of a claimed batch: labelled rows to the output queue, failures to a
retry batch (or dead letters at ``max_attempts``), the batch deleted — one transaction.

``complete`` takes plain mappings and merges each post's stored fields into its JSON output
row; ``complete_rows`` takes the output rows already built as a typed Arrow table (the
pipeline's path: nothing decoded or inferred here, the table is stored as an Arrow IPC
stream and exported as it is).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import pyarrow as pa

from queue_store import codec
from queue_store.models import CompleteResult
from queue_store.typed_rows import POST_FIELDS, to_ipc


class CompleteVerbs:
    """Mixed into ``QueueStore``; relies on its ``tables``, ``clock``, ``max_attempts``,
    ``_tx``, ``_held`` and ``_bury_posts``."""

    tables: dict[str, str]
    max_attempts: int

    def complete(self, batch_id: int, lease_id: str,
                 successes: Mapping[str, Mapping[str, Any] | str],
                 failures: Mapping[str, str]) -> CompleteResult:
        """Fenced ack. ``successes``: uri -> output columns (a mapping, or that mapping already
        encoded as a JSON object); ``failures``: uri -> reason.

        Together they must cover the batch's posts exactly. Returns ``accepted=False`` and
        writes nothing when ``lease_id`` no longer holds the batch.
        """
        with self._tx() as c:  # type: ignore[attr-defined]
            held = self._held(c, batch_id, lease_id)  # type: ignore[attr-defined]
            if held is None:
                return CompleteResult(accepted=False)
            posts, attempt, version = held
            _check_cover(batch_id, [p["uri"] for p in posts], successes, failures)
            labelled = [p for p in posts if p["uri"] in successes]
            out = [_output_row(p, successes[p["uri"]]) for p in labelled]
            failed = [(p, failures[p["uri"]]) for p in posts if p["uri"] in failures]
            return self._settle(c, batch_id, attempt, version,
                                codec.join_lines(out) if out else None,
                                [p["uri"] for p in labelled], failed)

    def complete_rows(self, batch_id: int, lease_id: str, labelled: pa.Table | None,
                      failed: Sequence[tuple[dict, str]]) -> CompleteResult:
        """Fenced ack with typed output rows: ``labelled`` holds one row per labelled post
        (the post's fields, then its output columns), ``failed`` is ``(post, reason)`` per failed post.

        Their counts must add up to the batch's posts (its stored ``n_posts``; the payload is
        not decoded again). Returns ``accepted=False`` and writes nothing when ``lease_id``
        no longer holds the batch.
        """
        n_labelled = 0 if labelled is None else labelled.num_rows
        missing = [f for f in POST_FIELDS if n_labelled and f not in labelled.column_names]
        if missing:
            raise ValueError(f"complete_rows({batch_id}): labelled rows lack {missing}")
        t = self.tables["input"]
        with self._tx() as c:  # type: ignore[attr-defined]
            row = c.execute(f"SELECT attempt, n_posts, version FROM {t} WHERE id = ? AND "
                            "lease_id = ? AND status = 'processing'",
                            (batch_id, lease_id)).fetchone()
            if row is None:
                return CompleteResult(accepted=False)
            attempt, n_posts, version = row
            if n_labelled + len(failed) != n_posts:
                raise ValueError(f"complete_rows({batch_id}) must account for each of its "
                                 f"{n_posts} posts once: got {n_labelled} labelled and "
                                 f"{len(failed)} failed")
            uris = labelled.column("uri").to_pylist() if n_labelled else []
            if len({*uris, *(post["uri"] for post, _ in failed)}) != n_posts:
                raise ValueError(f"complete_rows({batch_id}) names a post twice")
            return self._settle(c, batch_id, attempt, version,
                                to_ipc(labelled) if n_labelled else None, uris, list(failed))

    def _settle(self, c: Any, batch_id: int, attempt: int, version: str,
                payload: str | bytes | None, labelled_uris: list[str],
                failed: list[tuple[dict, str]]) -> CompleteResult:
        if payload is not None:
            c.execute(f"INSERT INTO {self.tables['output']} "
                      "(batch_id, version, payload, n_rows, created_at) VALUES (?, ?, ?, ?, ?)",
                      (batch_id, version, payload, len(labelled_uris),
                       self.clock()))  # type: ignore[attr-defined]
            c.execute(f"INSERT INTO {self.tables['labelled']} (version, uris) VALUES (?, ?)",
                      (version, codec.dumps(labelled_uris)))  # the ledger's done, folded later
        retried, dead = self._retry_or_bury(c, batch_id, failed, attempt, version)
        c.execute(f"DELETE FROM {self.tables['input']} WHERE id = ?", (batch_id,))
        return CompleteResult(accepted=True, labelled=len(labelled_uris), retried=retried,
                              dead_lettered=dead)

    def _retry_or_bury(self, c: Any, batch_id: int, failed: list[tuple[dict, str]],
                       attempt: int, version: str) -> tuple[int, int]:
        if not failed:
            return 0, 0
        if attempt >= self.max_attempts:
            self._bury_posts(c, batch_id, failed, attempt, version)  # type: ignore
            return 0, len(failed)
        posts = [p for p, _ in failed]
        meta = {"retry_of": batch_id, "last_reasons": sorted({r for _, r in failed})[:5],
                "batch_size": len(posts), "actual_batch_size": len(posts)}
        c.execute(f"INSERT INTO {self.tables['input']} (payload, metadata, n_posts, version, "
                  "attempt, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                  (codec.dumps(posts), codec.dumps(meta), len(posts), version, attempt,
                   self.clock()))  # type: ignore[attr-defined]
        return len(failed), 0


def _output_row(post: dict, columns: Mapping[str, Any] | str) -> str:
    """The post's fields followed by its output columns, as one JSON object."""
    if not isinstance(columns, str):
        clash = post.keys() & columns.keys()
        if clash:
            raise ValueError(f"output columns {sorted(clash)} would overwrite post fields")
        return codec.dumps({**post, **columns})
    if "\n" in columns:  # keep rows newline-free (see codec.join_lines)
        columns = codec.dumps(codec.loads(columns))
    return codec.merge_objects(codec.dumps(post), columns)


def _check_cover(batch_id: int, uris: list[str], successes: Mapping[str, Any],
                 failures: Mapping[str, Any]) -> None:
    expected = set(uris)
    both = successes.keys() & failures.keys()
    given = set(successes.keys()) | set(failures.keys())
    if both or given != expected:
        raise ValueError(
            f"complete({batch_id}) must account for each post exactly once: "
            f"{len(expected - given)} missing, {len(given - expected)} unknown, "
            f"{len(both)} both succeeded and failed")
