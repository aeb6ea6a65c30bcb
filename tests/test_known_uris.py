"""The compact known-uri set used for enqueue-time dedupe."""
from __future__ import annotations

import numpy as np

from jobs.stages.enqueue import _repeats
from jobs.posts.known_uris import KnownUris, digests


def test_membership_across_merges():
    known = KnownUris()
    known.update(f"at://a/{i}" for i in range(200_000))  # forces several big/recent merges
    probe = [f"at://a/{i}" for i in range(199_990, 200_010)]
    assert known.contains(digests(probe)).tolist() == [True] * 10 + [False] * 10
    known.add(digests(["at://a/200005"]))
    assert known.contains(digests(["at://a/200005", "at://a/200006"])).tolist() == [True, False]
    assert len(known) == 200_001
    assert known.nbytes == 16 * 200_001  # 16 bytes a uri, nothing per object


def test_empty_set_and_repeats_within_a_batch():
    assert KnownUris().contains(digests(["x"])).tolist() == [False]
    keys = digests(["a", "b", "a", "c", "b"])
    assert _repeats(keys).tolist() == [False, False, True, False, True]
    assert isinstance(_repeats(keys), np.ndarray)
