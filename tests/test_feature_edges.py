"""Edges of single features that a mutation run showed no test held: the scrubber on keys it
was never told about, weight hashing past its read block, a claim of one version beside
another's pending batches, and output compaction keeping the old files until the swap."""
from __future__ import annotations

import pyarrow.dataset as pads
import pytest

import queue_store.compaction as compaction
from classifiers.hf.weights import weights_hash
from classifiers.scrub import MASK, scrub
from tests.queue_helpers import NAME, Store, complete, export_output, posts_of
from queue_store.location import Location
from tests.conftest import make_posts

KEY = "zq8W3kP0vN7xR2yL"  # never registered


@pytest.mark.parametrize("text", [
    f"GET https://api.example.com/v1/analyze?key={KEY} failed",
    f"GET https://api.example.com/v1/analyze?lang=en&key={KEY}&x=1 failed",
    f"GET https://host/x?api_key={KEY}",
    f"401: Bearer {KEY} was refused",
    f"headers {{'Authorization': 'Bearer {KEY}'}}",
    f"x-api-key: {KEY}",
    f"the server echoed sk-{KEY}",
])
def test_scrub_masks_a_key_it_was_never_told_about(text):
    out = scrub(text)
    assert KEY not in out and MASK in out, out


def test_a_retrained_head_that_changes_only_the_end_of_a_large_weight_file_changes_its_hash(
        tmp_path):
    """Weights are hashed whole, not their first read block (4 MiB)."""
    weights = tmp_path / "model.safetensors"
    data = bytearray(6 * 1024 * 1024)
    weights.write_bytes(bytes(data))
    before = weights_hash(tmp_path)
    data[-1] = 1  # the classification head sits at the end
    weights.write_bytes(bytes(data))
    assert weights_hash(tmp_path) != before


def test_a_claim_takes_only_its_own_versions_batches_while_another_version_waits(tmp_path):
    store = Store(tmp_path, NAME)
    posts = make_posts(40)
    store.enqueue(posts[:20], batch_size=5, config_hash="old")
    store.enqueue(posts, batch_size=5, config_hash="new", relabel=True)
    store.enqueue(posts[20:], batch_size=5, config_hash="old", relabel=True)  # later ids
    got = store.claim(100, config_hash="new")
    assert len(got) == 8 and all(b.config_hash == "new" for b in got)
    assert {p["uri"] for b in got for p in posts_of(b)} == {p["uri"] for p in posts}
    assert store.pending_versions() == {"old": 40}
    assert store.claim(100, config_hash="other") == []
    store.close()


def test_output_compaction_keeps_every_old_file_visible_until_the_swap(tmp_path,
                                                                       monkeypatch):
    """At the moment of the exchange the partition still holds all its old files (a reader
    sees every row), and the new set holds every row too."""
    store = Store(tmp_path, NAME)
    store.enqueue(make_posts(600, days=1), batch_size=50)
    out = tmp_path / "out"
    while batches := store.claim(max_batches=2):
        for b in batches:
            complete(store, b, {p["uri"]: {"label": "x"} for p in posts_of(b)})
        export_output(store, out, 100)
    real = compaction.exchange
    seen = []

    def checked(hidden, part):
        seen.append((len(pads.dataset(part).to_table()), len(pads.dataset(hidden).to_table())))
        real(hidden, part)

    monkeypatch.setattr(compaction, "exchange", checked)
    stats = compaction.compact_output(store, Location.of(out), target_rows=250)
    assert stats.partitions == 1 and seen == [(600, 600)]
    assert len(pads.dataset(out, partitioning="hive").to_table()) == 600
    store.close()
