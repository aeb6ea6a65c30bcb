"""A compact set of already-known post uris for enqueue-time dedupe.

Each uri is held as a 16-byte BLAKE2b digest in sorted numpy arrays (16 bytes a post, no
per-object overhead); at 128 bits the chance that a new post collides with a known one is
negligible (~1e-24 for a billion pairs), so no post is wrongly skipped in practice. New keys go
to a small sorted array that is merged into the big one when it grows past a quarter of it,
so adding n keys costs O(n log n) overall.
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Iterator

import numpy as np

DIGEST = np.dtype("S16")
_CHUNK = 65_536


def digests(uris: Iterable[str]) -> np.ndarray:
    return np.array([hashlib.blake2b(u.encode(), digest_size=16).digest() for u in uris],
                    dtype=DIGEST)


def _chunks(uris: Iterable[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    for uri in uris:
        chunk.append(uri)
        if len(chunk) >= _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _member(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    if not len(sorted_keys):
        return np.zeros(len(keys), dtype=bool)
    pos = np.searchsorted(sorted_keys, keys).clip(max=len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


class KnownUris:
    def __init__(self) -> None:
        self._big = np.empty(0, dtype=DIGEST)
        self._recent = np.empty(0, dtype=DIGEST)

    def update(self, uris: Iterable[str]) -> None:
        for chunk in _chunks(uris):
            self.add(digests(chunk))

    def add(self, keys: np.ndarray) -> None:
        self._recent = np.unique(np.concatenate([self._recent, keys]))
        if len(self._recent) > max(_CHUNK, len(self._big) // 4):
            self._big = np.unique(np.concatenate([self._big, self._recent]))
            self._recent = np.empty(0, dtype=DIGEST)

    def __len__(self) -> int:
        return len(self._big) + len(self._recent)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Boolean mask: which of the digests in ``keys`` are known."""
        return _member(self._big, keys) | _member(self._recent, keys)

    @property
    def nbytes(self) -> int:
        return self._big.nbytes + self._recent.nbytes
