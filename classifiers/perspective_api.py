"""``perspective_api``: Google's Comment Analyzer (``comments:analyze``), one request per post.

Each requested attribute's summary score becomes a ``prob_<attribute>`` float column
(lower case). The key travels in the request URL, as the API wants; it never appears in a
reason, a log line or the output. Requests are kept under ``requests_per_second`` (the API's
default quota is 1/s per project; the tool we replace ran under 100/s).
"""
from __future__ import annotations

from typing import Any, Sequence

from classifiers.hosted_calls import HostedCaller, api_key, check_url
from classifiers.protocol import PostFailure, Provenance

# The attributes the original tool requested: toxicity and the bridging/civility ones.
DEFAULT_ATTRIBUTES = (
    "TOXICITY", "SEVERE_TOXICITY", "IDENTITY_ATTACK", "INSULT", "PROFANITY", "THREAT",
    "SEXUALLY_EXPLICIT", "FLIRTATION", "AFFINITY_EXPERIMENTAL", "COMPASSION_EXPERIMENTAL",
    "CONSTRUCTIVE_EXPERIMENTAL", "CURIOSITY_EXPERIMENTAL", "NUANCE_EXPERIMENTAL",
    "PERSONAL_STORY_EXPERIMENTAL", "REASONING_EXPERIMENTAL", "RESPECT_EXPERIMENTAL",
    "ALIENATION_EXPERIMENTAL", "FEARMONGERING_EXPERIMENTAL", "GENERALIZATION_EXPERIMENTAL",
    "MORAL_OUTRAGE_EXPERIMENTAL", "POWER_APPEAL_EXPERIMENTAL", "SCAPEGOATING_EXPERIMENTAL",
)
DEFAULT_URL = "https://commentanalyzer.googleapis.com/v1alpha1"


class PerspectiveClassifier:
    classifier_name = "perspective_api"

    def __init__(self, api_key_env: str = "PERSPECTIVE_API_KEY", base_url: str = DEFAULT_URL,
                 attributes: Sequence[str] = DEFAULT_ATTRIBUTES,
                 languages: Sequence[str] = ("en",), requests_per_second: float = 1.0,
                 max_concurrency: int = 8, timeout_s: float = 30.0,
                 max_retries: int = 5, max_retry_wait_s: float = 60.0,
                 retry_budget_s: float = 300.0) -> None:
        self.attributes = self.check(attributes, base_url)
        key = api_key(api_key_env, "perspective_api")
        self.url = f"{check_url(base_url)}/comments:analyze?key={key}"
        self.languages = list(languages)
        self.caller = HostedCaller(max_concurrency, None, requests_per_second, None,
                                   max_retries, timeout_s, api_key_env, key,
                                   max_retry_wait_s, retry_budget_s)
        self.provenance = Provenance(classifier=self.classifier_name, model="comments:analyze")

    @staticmethod
    def check(attributes: Any, base_url: str) -> list[str]:
        check_url(base_url)
        if not attributes or not all(isinstance(a, str) and a for a in attributes):
            raise ValueError("attributes must be a list of Perspective attribute names")
        return [a.upper() for a in attributes]

    @classmethod
    def preflight(cls, params: dict[str, Any]) -> None:
        cls.check(params.get("attributes", DEFAULT_ATTRIBUTES),
                  params.get("base_url", DEFAULT_URL))
        api_key(params.get("api_key_env", "PERSPECTIVE_API_KEY"), "perspective_api")

    def classify(self, texts: list[str]) -> list[dict[str, Any] | PostFailure]:
        return self.caller.map_posts(self._one, texts)

    def usage(self) -> dict[str, int]:
        return self.caller.usage()

    def status(self) -> dict[str, str]:
        return self.caller.status()

    async def _one(self, text: str) -> dict[str, Any] | PostFailure:
        payload = {"comment": {"text": text}, "languages": self.languages,
                   "requestedAttributes": {a: {} for a in self.attributes},
                   "doNotStore": True}
        data = await self.caller.post_json(self.url, payload, {}, what="comments:analyze")
        scores = data.get("attributeScores") or {}
        out = {}
        for attr in self.attributes:
            try:
                out[f"prob_{attr.lower()}"] = float(scores[attr]["summaryScore"]["value"])
            except (KeyError, TypeError, ValueError):
                return PostFailure(reason=f"no score for {attr} in the answer: "
                                          f"{str(data)[:200]!r}")
        return out
