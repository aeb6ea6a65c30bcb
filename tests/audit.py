"""Where every (post, config_hash) of an integration is, read from its queue file and its
parquet output as they are on disk: the checker of the whole-system tests and of the kill
campaign (``benchmarks/kill_campaign.py``). Small data only: it holds every uri in memory."""
from __future__ import annotations

import json
import os
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pyarrow.parquet as pq

from queue_store import codec
from queue_store.location import Location
from queue_store.rows.typed import from_ipc
from queue_store.schema import has_table, table_names

Key = tuple[str, str]  # (uri, config_hash)


@dataclass
class Places:
    """How often each (uri, config_hash) is in each place."""

    pending: Counter = field(default_factory=Counter)
    leased: Counter = field(default_factory=Counter)
    dead: Counter = field(default_factory=Counter)
    # Output rows not in a written export, and the rows of recorded files not yet published.
    unexported: Counter = field(default_factory=Counter)
    parquet: Counter = field(default_factory=Counter)     # rows in the visible parquet files
    planned_exports: int = 0
    rows: dict[Key, dict[str, Any]] = field(default_factory=dict)  # output rows' values

    def every(self) -> set[Key]:
        return set(self.pending) | set(self.leased) | set(self.dead) | set(
            self.unexported) | set(self.parquet)

    def count(self, key: Key) -> int:
        """In how many places (and how many times) the post is; exactly-once means 1."""
        return (self.pending[key] + self.leased[key] + self.dead[key] + self.unexported[key]
                + self.parquet[key])

    def problems(self) -> list[str]:
        """Posts held more than once (a planned export's rows count once: its files are the
        rewrite of those rows, finished by the next export)."""
        out = []
        for key in sorted(self.every()):
            n = self.count(key)
            if self.planned_exports and self.unexported[key] == 1 and self.parquet[key] == 1:
                n -= 1
            if n != 1:
                out.append(f"{key}: pending {self.pending[key]}, leased {self.leased[key]}, "
                           f"dead {self.dead[key]}, unexported {self.unexported[key]}, "
                           f"parquet {self.parquet[key]}")
        return out


def places(queue_file: Path, integration: str, output: Path | str | None) -> Places:
    found = Places()
    t = table_names(integration)
    if Path(queue_file).is_file():
        conn = sqlite3.connect(f"file:{queue_file}?mode=ro", uri=True)
        try:
            for payload, version, status in conn.execute(
                    f"SELECT payload, version, status FROM {t['input']}"):
                into = found.pending if status == "pending" else found.leased
                for uri in codec.loads_posts(payload).column("uri").to_pylist():
                    into[(uri, version)] += 1
            for uri, version in conn.execute(f"SELECT uri, version FROM {t['dead']}"):
                found.dead[(uri, version)] += 1
            written = {i for (i,) in conn.execute(
                f"SELECT id FROM {t['exports']} WHERE state = 'written'")}
            found.planned_exports = conn.execute(
                f"SELECT COUNT(*) FROM {t['exports']} WHERE state = 'planned'").fetchone()[0]
            for payload, version, export_id in conn.execute(
                    f"SELECT payload, version, export_id FROM {t['output']}"):
                for row in from_ipc(payload).to_pylist():
                    key = (row["uri"], version)
                    if export_id not in written:
                        found.unexported[key] += 1
                    found.rows[key] = row
            files = t["files"] if has_table(conn, t["files"]) else None
            for version, where in conn.execute(
                    f"SELECT version, files FROM {files} WHERE state = 'staged'") if files else ():
                for staged in json.loads(where).values():  # recorded, not yet published
                    if not Path(staged).is_file():  # moved to its final name already
                        continue
                    for row in pq.read_table(staged).to_pylist():
                        found.unexported[(row["uri"], version)] += 1
                        found.rows[(row["uri"], version)] = row
        finally:
            conn.close()
    if output is not None:
        for row in _published_rows(Location.of(output)):
            key = (row["uri"], row["config_hash"])
            found.parquet[key] += 1
            found.rows[key] = row
    return found


_READ: dict[tuple, list[dict[str, Any]]] = {}  # a local file's rows, by what identifies it


def _published_rows(root: Location) -> Iterator[dict[str, Any]]:
    """Every row of the parquet files a reader of ``root`` sees (what ``pyarrow.dataset``
    finds there: names starting with "." or "_" are not its). A local file already read, the
    same file still (inode, size, mtime), is not read again: the checker reads the output
    after every step of a sequence, and most steps leave most files as they were."""
    if not root.local:
        if root.has_parquet():
            yield from root.dataset().to_table().to_pylist()
        return
    if len(_READ) > 4096:
        _READ.clear()
    for folder, dirs, files in os.walk(root.path):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        for name in sorted(files):
            if name.startswith((".", "_")):
                continue
            path = os.path.join(folder, name)
            st = os.stat(path)
            key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
            if key not in _READ:
                _READ[key] = pq.read_table(path).to_pylist()
            yield from _READ[key]
