"""Shared fixtures. Environment is set before anything imports Ray or transformers."""
from __future__ import annotations

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


def make_posts(n: int, start: int = 0, days: int = 3, prefix: str = "at://post/") -> list[dict]:
    return [{"uri": f"{prefix}{i}",
             "text": f"post number {i} about something worth labelling",
             "preprocessing_timestamp": f"2024-10-{1 + i % days:02d}-12:00:00"}
            for i in range(start, start + n)]


@pytest.fixture
def posts_factory():
    return make_posts


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session: 2 CPUs, no dashboard, small object store."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=500_000_000,
                 log_to_driver=False)
    yield ray
    ray.shutdown()
