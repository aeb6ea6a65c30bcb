"""A post's fingerprint: the 128-bit XXH3 hash of its uri's UTF-8 bytes, as two int64s.

``key`` (the first 64 bits) orders the ledger's entries; ``check`` (the other 64) tells apart
two uris whose keys collide, so two posts count as one only if all 128 bits agree — for a
billion posts the chance that any two distinct uris do is about 1.5e-21. XXH3 is a frozen,
specified hash (the same bytes give the same value on every platform and in every release of
the ``xxhash`` package), which is what a fingerprint kept on disk across versions needs.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import xxhash

_DIGEST = xxhash.xxh3_128_digest


def fingerprints(uris: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """``(key, check)`` int64 arrays for a string column without nulls."""
    if len(uris) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy()
    raw = uris.cast(pa.binary()).to_pylist()  # bytes objects: what the hash reads
    both = np.frombuffer(b"".join(map(_DIGEST, raw)), dtype=">u8").reshape(-1, 2)
    # The digest is big-endian (high 64 bits first); as signed ints for SQLite and numpy.
    return (both[:, 0].astype(np.uint64).view(np.int64),
            both[:, 1].astype(np.uint64).view(np.int64))
