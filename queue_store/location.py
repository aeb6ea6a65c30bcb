"""Where parquet lives: a local folder, or any filesystem pyarrow supports (``s3://bucket/...``,
``gs://``, ``hdfs://``). One type for posts, the labels' output, and gold files.

Credentials never come from here: S3 reads the standard AWS chain (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, instance roles). ``ObjectStore`` carries only
where an S3-compatible store answers (MinIO, Ceph: ``endpoint_url``) and its region.

Writes are whole objects: a local file is written under a dot-prefixed temporary name (which
dataset readers ignore) and renamed into place; an object store's upload becomes visible
only when it completes (a single PUT, or a multipart upload completed last), so an upload
killed part-way leaves no object, and a rerun writes the same key again.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

# pyarrow.dataset is imported where a dataset is read: it brings pandas (~0.35 s of each
# process start), which a QueueActor, or a CLI command that reads no dataset, never needs.
if TYPE_CHECKING:
    import pyarrow.dataset as pads


class ObjectStore(BaseModel):
    """How to reach an S3-compatible store; credentials come from the environment."""

    model_config = ConfigDict(extra="forbid")

    endpoint_url: str | None = None  # e.g. http://minio.internal:9000 (None: AWS itself)
    region: str | None = None        # None: the AWS chain's (AWS_REGION, profile) or us-east-1


def is_uri(where: str | Path) -> bool:
    return "://" in str(where)


@dataclass(frozen=True)
class Location:
    """A folder on some filesystem: ``fs`` and the ``path`` inside it; ``uri`` as written."""

    fs: pafs.FileSystem
    path: str
    uri: str

    @classmethod
    def of(cls, where: str | Path, store: ObjectStore | None = None) -> "Location":
        where = str(where)
        if not is_uri(where):
            path = str(Path(where).expanduser().resolve())
            return cls(pafs.LocalFileSystem(), path, path)
        if where.startswith("s3://"):
            return cls(_s3(store or ObjectStore()), where[len("s3://"):].rstrip("/"), where)
        fs, path = pafs.FileSystem.from_uri(where)
        return cls(fs, path.rstrip("/"), where)

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def child(self, *parts: str) -> "Location":
        tail = "/".join(parts)
        return Location(self.fs, f"{self.path.rstrip('/')}/{tail}",
                        f"{self.uri.rstrip('/')}/{tail}")

    def __str__(self) -> str:
        return self.uri

    def exists(self) -> bool:
        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def has_parquet(self) -> bool:
        if not self.exists():
            return False
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True))
        return any(i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
                   and not i.base_name.startswith((".", "_")) for i in infos)

    def dataset(self, **kwargs: Any) -> pads.Dataset:
        """The hive-partitioned parquet dataset under this folder, with every column of every
        file: a label column that appeared part-way through a backfill is in the schema even
        where the first file lacks it (those rows read it as null)."""
        import pyarrow.dataset as pads

        dataset = pads.dataset(self.path, filesystem=self.fs, format="parquet",
                               partitioning="hive", **kwargs)
        if "schema" in kwargs:
            return dataset
        unified = unified_schema(f.physical_schema for f in dataset.get_fragments())
        if unified is None or all(name in dataset.schema.names for name in unified.names):
            return dataset
        return pads.dataset(self.path, filesystem=self.fs, format="parquet",
                            partitioning="hive",
                            schema=pa.unify_schemas([unified, dataset.schema]), **kwargs)

    def write_parquet(self, relative: str, table: pa.Table) -> None:
        """Write ``table`` to ``relative`` (under this folder) as one whole object: never
        half-visible, and a second write of the same name replaces the first."""
        target = f"{self.path}/{relative}"
        parent = target.rsplit("/", 1)[0]
        if not self.local:
            pq.write_table(table, target, filesystem=self.fs, compression="zstd")
            return
        self.fs.create_dir(parent, recursive=True)
        name = target.rsplit("/", 1)[1]
        tmp = f"{parent}/.tmp-{os.getpid()}-{name}"
        try:
            pq.write_table(table, tmp, filesystem=self.fs, compression="zstd")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)  # a half-written temp file is never left behind
            raise
        os.replace(tmp, target)

    def check_writable(self) -> None:
        """Write and delete a small probe object (object stores: the only honest check).
        Raises ``OSError`` naming the cause."""
        if self.local:
            raise ValueError("check_writable is for object stores; local folders are checked "
                             "without writing")
        probe = f"{self.path}/.backfill-probe-{uuid.uuid4().hex[:12]}"
        with self.fs.open_output_stream(probe) as fh:
            fh.write(b"probe")
        self.fs.delete_file(probe)


def _s3(store: ObjectStore) -> pafs.S3FileSystem:
    kwargs: dict[str, Any] = {}
    if store.endpoint_url:
        scheme, _, host = store.endpoint_url.partition("://")
        kwargs.update(endpoint_override=host.rstrip("/") if host else scheme,
                      scheme=scheme if host else "https")
    if store.region:
        kwargs["region"] = store.region
    return pafs.S3FileSystem(**kwargs)


def unified_schema(schemas: Iterable[pa.Schema]) -> pa.Schema | None:
    """The columns of several files' schemas, in first-seen order (None: no file)."""
    seen: list[pa.Schema] = []
    for schema in schemas:
        if not any(schema.equals(s) for s in seen):
            seen.append(schema)
    return pa.unify_schemas(seen) if seen else None
