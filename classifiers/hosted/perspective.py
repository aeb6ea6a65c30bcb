"""``perspective_api``: Google's Comment Analyzer (``comments:analyze``), one request per post.

Each requested attribute's summary score becomes a ``prob_<attribute>`` float column
(lower case). The key travels in the request URL, as the API wants; it never appears in a
reason, a log line or the output. Requests are kept under ``requests_per_second`` (the API's
default quota is 1/s per project; the tool we replace ran under 100/s).
"""
from __future__ import annotations

from typing import Any

from classifiers.hosted.calls import HostedCaller, HostedClassifier, api_key, check_url
from classifiers.params import RUNTIME, HostedParams, param
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


class PerspectiveParams(HostedParams):
    api_key_env: str = param("PERSPECTIVE_API_KEY", "the NAME of the environment variable "
                             "that holds the key (the key itself never goes in the config)",
                             RUNTIME)
    base_url: str = param(DEFAULT_URL, "the Comment Analyzer endpoint")
    attributes: list[str] = param(list(DEFAULT_ATTRIBUTES), "the attributes to score, each a "
                                  "prob_<attribute> column (default: the original tool's 22)",
                                  min_length=1)
    languages: list[str] = param(["en"], "the posts' languages")
    requests_per_second: float = param(1.0, "request budget per actor (the API's default "
                                       "quota is 1/s per project)", RUNTIME, gt=0)
    max_concurrency: int = param(8, "requests in flight per actor", RUNTIME, ge=1)


class PerspectiveClassifier(HostedClassifier):
    classifier_name = "perspective_api"
    Params = PerspectiveParams

    def __init__(self, params: PerspectiveParams) -> None:
        self.attributes = [a.upper() for a in params.attributes]
        key = api_key(params.api_key_env, "perspective_api")
        self.url = f"{check_url(params.base_url)}/comments:analyze?key={key}"
        self.languages = list(params.languages)
        self.caller = HostedCaller(params, params.api_key_env, key,
                                   requests_per_second=params.requests_per_second)
        self.provenance = Provenance(classifier=self.classifier_name, model="comments:analyze")

    @classmethod
    def preflight(cls, params: PerspectiveParams) -> None:
        check_url(params.base_url)
        api_key(params.api_key_env, "perspective_api")

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
