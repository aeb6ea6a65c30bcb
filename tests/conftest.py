"""Shared fixtures. Environment is set before anything imports Ray or transformers."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# A Hugging Face cache of the test session's own (never the user's): tests put models in it
# under real hub ids; Ray workers started by the session inherit it.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="backfill-hf-home-")
atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The S3-compatible test server (moto, tests/s3_server.py) takes any credentials; without any,
# pyarrow would ask the cloud's metadata service. Ray workers inherit these.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_REGION", "us-east-1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

import pytest  # noqa: E402


def make_posts(n: int, start: int = 0, days: int = 3, prefix: str = "at://post/") -> list[dict]:
    return [{"uri": f"{prefix}{i}",
             "text": f"post number {i} about something worth labelling",
             "preprocessing_timestamp": f"2024-10-{1 + i % days:02d}-12:00:00"}
            for i in range(start, start + n)]


@pytest.fixture
def key(monkeypatch):
    """The fake hosted server's key in the variables the hosted test configs name."""
    from tests.fake_hosted import KEY

    monkeypatch.setenv("TEST_LLM_KEY", KEY)
    monkeypatch.setenv("TEST_PERSPECTIVE_KEY", KEY)


@pytest.fixture
def posts_factory():
    return make_posts


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session: 2 CPUs, no dashboard, small object store."""
    import ray

    if not ray.is_initialized():
        # Workers import the test plugins (tests.plugins) the way a user's plugin is imported.
        # Put there as a user's PYTHONPATH is: the Ray started here passes this process's
        # environment on to its workers (a runtime_env instead would cost every worker ~0.35 s
        # more to start: Ray's runtime-env agent is asked for each).
        root = str(Path(__file__).resolve().parents[1])
        path = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, path) if p)
        # address="local": a Ray of the session's own, even where other Rays run on the host
        # (ray.init() alone would join one of them). Workers' output stays in their log
        # files, as a command's own Ray keeps it (``log_to_driver`` only with --verbose): a
        # test that counts a command's stderr lines must not count what Ray's C++ core
        # prints from a worker being stopped (seen under load: abseil's "Lock blocking").
        ray.init(address="local", num_cpus=2, include_dashboard=False,
                 object_store_memory=500_000_000, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-compatible server (moto's server mode, its own process) on 127.0.0.1."""
    from tests.s3_server import S3Server

    with S3Server() as server:
        yield server


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    from tests.tiny_models import save_tiny_models

    return save_tiny_models(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory):
    """A tiny random-weight Qwen2-style causal LM with a BPE tokenizer and a chat template."""
    from tests.tiny_llm import save_tiny_llm

    root = tmp_path_factory.mktemp("tiny_llm")
    return {"chat": save_tiny_llm(root / "chat"),
            "raw": save_tiny_llm(root / "raw", chat=False)}


QWEN = "Qwen/Qwen2.5-1.5B-Instruct"  # the shipped LLM config's model id


@pytest.fixture(scope="session")
def qwen_in_cache(tiny_llm):
    """The tiny chat LM, in the session's HF cache under the shipped config's hub id."""
    from huggingface_hub.constants import HF_HUB_CACHE

    from tests.hf_cache import put_in_cache

    return put_in_cache(tiny_llm["chat"], QWEN, Path(HF_HUB_CACHE))


@pytest.fixture
def inprocess(ray_session, monkeypatch):
    """The session's Ray as the cluster a run sees, the run's actors and passes in this
    process (``tests/twin.py``): for tests whose claims need no process of their own."""
    from tests.twin import Twin

    twin = Twin()
    twin.install(monkeypatch)
    yield ray_session
    twin.close()
