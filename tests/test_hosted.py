"""Hosted-model classifiers against a real HTTP server on 127.0.0.1 (no client mocks)."""
from __future__ import annotations

import pytest

from classifiers.protocol import FatalClassifierError, PostFailure
from classifiers.registry import ClassifierConfigError, build_classifier, preflight
from tests.fake_hosted import KEY, FakeHosted, chat_classifier

CHOICES = {1: "1", 0: "0"}
TEMPLATE = "Is this post about relations between groups? Post: {text} Answer with JSON."




def test_answers_retries_and_bad_answers_fail_alone(key):
    posts = ["two groups at odds", "my cat", "RATE429 groups again", "ERR500 a post",
             "SLOW group talk", "BADJSON post", "OUTOFSET post"]
    with FakeHosted(slow_s=3.0) as server:
        clf = chat_classifier(server)
        rows = clf.classify(posts)
        usage = clf.usage()
    assert rows[:5] == [{"label": 1}, {"label": 0}, {"label": 1}, {"label": 0}, {"label": 1}]
    assert isinstance(rows[5], PostFailure) and "label: one, I think" in rows[5].reason
    assert isinstance(rows[6], PostFailure) and "not one of the choices" in rows[6].reason
    assert '{"label": 7}' in rows[6].reason
    assert usage["requests_retried"] == 1 + 2 + 1  # 429 once, 500 twice, one timeout
    assert usage["requests_ok"] == 7 and usage["completion_tokens"] == 21
    assert sum(n for text, n in server.seen.items() if "RATE429" in text) == 2


def test_json_fields_become_label_columns(key):
    with FakeHosted() as server:
        clf = chat_classifier(server, template="Sociopolitical? Post: {text}", choices=None,
                    fields={"is_sociopolitical": [0, 1],
                            "political_ideology_label": ["left", "right", "moderate",
                                                         "unclear"]})
        rows = clf.classify(["go vote today", "nice weather"])
    assert rows == [{"is_sociopolitical": 1, "political_ideology_label": "left"},
                    {"is_sociopolitical": 0, "political_ideology_label": "unclear"}]


def test_request_rate_stays_within_the_budget(key):
    with FakeHosted() as server:
        clf = chat_classifier(server, requests_per_minute=600, max_concurrency=32)  # 10 requests/s
        clf.classify([f"post {i} about groups" for i in range(30)])
        times = sorted(server.times)
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert rate <= 10 * 1.1, rate
    # No burst: any 21 requests span at least ~2 s. The times are the server's, which shares
    # this process (and its GIL) with the client: a request held up on its way by 0.1 s
    # shortens a window by as much, so the window is long enough for that to be noise.
    for i in range(len(times) - 20):
        assert times[i + 20] - times[i] >= 2.0 / 1.1, (i, times[i + 20] - times[i])


def test_rejected_key_is_fatal_and_names_the_variable(key):
    with FakeHosted(unauthorized=True) as server:
        clf = chat_classifier(server)
        with pytest.raises(FatalClassifierError, match="TEST_LLM_KEY"):
            clf.classify(["a post", "another post"])


def test_preflight_needs_the_key_and_a_url(monkeypatch):
    monkeypatch.delenv("NOPE_KEY", raising=False)
    with pytest.raises(ClassifierConfigError, match="export NOPE_KEY"):
        preflight("openai_chat", {"base_url": "http://127.0.0.1:1/v1", "model": "m",
                                  "api_key_env": "NOPE_KEY", "template": TEMPLATE,
                                  "choices": CHOICES})
    monkeypatch.setenv("NOPE_KEY", "x")
    with pytest.raises(ClassifierConfigError, match="not an http"):
        preflight("openai_chat", {"base_url": "localhost:8000", "model": "m",
                                  "api_key_env": "NOPE_KEY", "template": TEMPLATE,
                                  "choices": CHOICES})


def test_perspective_scores_and_the_key_stays_out_of_reasons(key):
    with FakeHosted() as server:
        clf = build_classifier("perspective_api", dict(
            api_key_env="TEST_PERSPECTIVE_KEY", base_url=server.perspective_url,
            attributes=["TOXICITY", "AFFINITY_EXPERIMENTAL"], requests_per_second=50,
            timeout_s=1.0))
        rows = clf.classify(["hello there", "ERR500 retried", "BADJSON here"])
    assert rows[0] == {"prob_toxicity": 0.1, "prob_affinity_experimental": 0.1}
    assert set(rows[1]) == {"prob_toxicity", "prob_affinity_experimental"}
    assert isinstance(rows[2], PostFailure) and KEY not in rows[2].reason
    assert "not JSON" in rows[2].reason


def test_vader_valence_labels():
    rows = build_classifier("vader").classify(["I love this, what a wonderful day!",
                                       "This is terrible and I hate it.",
                                       "The bus leaves at noon."])
    assert [r["valence_label"] for r in rows] == ["positive", "negative", "neutral"]
    assert rows[0]["compound"] >= 0.05 and rows[1]["compound"] <= -0.05
    assert rows[2]["compound"] == 0.0
