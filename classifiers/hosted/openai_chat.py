"""``openai_chat``: any OpenAI-compatible ``/v1/chat/completions`` endpoint (OpenAI, a vLLM or
Ollama server, a LiteLLM proxy) answers the prompt for each post.

The answer becomes label columns in one of two ways:
- ``fields`` (JSON answers; ``json_mode: true`` asks the server for a JSON object): each field
  named there is a label column and must hold one of its allowed values, e.g.
  ``fields: {is_sociopolitical: [0, 1], political_ideology_label: [left, right, ...]}``;
- otherwise the bare answer text is matched against the prompt's ``choices``
  (``label`` = the matching choice's label value; with JSON answers ``{"label": ...}`` too).
Anything else fails that post only, with the first 200 characters of the answer as reason.
"""
from __future__ import annotations

import json
from typing import Any

from classifiers.hosted.calls import HostedCaller, HostedClassifier, api_key, check_url
from classifiers.params import MODEL, RUNTIME, HostedParams, param
from classifiers.prompts import PromptParams
from classifiers.protocol import PostFailure, Provenance


class OpenAIChatParams(PromptParams, HostedParams):
    base_url: str = param(..., "the endpoint, e.g. https://api.openai.com/v1 or "
                          "http://localhost:8000/v1 (vLLM); override with --set")
    model: str = param(..., "the model name the endpoint serves", MODEL)
    api_key_env: str = param("OPENAI_API_KEY", "the NAME of the environment variable that "
                             "holds the key (the key itself never goes in the config)", RUNTIME)
    fields: dict[str, list[Any]] | None = param(
        None, "JSON answers with several label columns, each checked against its allowed "
        "values, e.g. {is_sociopolitical: [0, 1]}")
    json_mode: bool = param(False, "ask for a JSON object (response_format); the answer's "
                            "label is matched against the choices")
    temperature: float = param(0.0, "passed on", ge=0)
    max_tokens: int = param(16, "passed on", ge=1)
    seed: int | None = param(None, "passed on")
    requests_per_minute: float | None = param(None, "request budget per actor (no bursts)",
                                              RUNTIME, gt=0)
    tokens_per_minute: float | None = param(None, "token budget per actor (estimated before "
                                            "each request)", RUNTIME, gt=0)
    cost_per_1k_prompt_tokens: float = param(0.0, "for the run summary's estimated_cost",
                                             RUNTIME, ge=0)
    cost_per_1k_completion_tokens: float = param(0.0, "for the run summary's estimated_cost",
                                                 RUNTIME, ge=0)

    def estimated_cost(self, usage: dict[str, int]) -> float:
        """What the tokens in ``usage`` cost at the declared prices."""
        return (usage.get("prompt_tokens", 0) * self.cost_per_1k_prompt_tokens
                + usage.get("completion_tokens", 0) * self.cost_per_1k_completion_tokens) / 1000


class OpenAIChatClassifier(HostedClassifier):
    classifier_name = "openai_chat"
    Params = OpenAIChatParams

    def __init__(self, params: OpenAIChatParams) -> None:
        self.spec = self._prompt(params)
        self.url = check_url(params.base_url) + "/chat/completions"
        self.model = params.model
        key = api_key(params.api_key_env, "openai_chat")
        self._headers = {"Authorization": f"Bearer {key}"}
        self.fields = {k: list(v) for k, v in (params.fields or {}).items()}
        self.json_mode = params.json_mode
        self.options: dict[str, Any] = {"temperature": params.temperature,
                                        "max_tokens": params.max_tokens}
        if params.seed is not None:
            self.options["seed"] = params.seed
        if params.json_mode:
            self.options["response_format"] = {"type": "json_object"}
        self.caller = HostedCaller(params, params.api_key_env, key,
                                   requests_per_minute=params.requests_per_minute,
                                   tokens_per_minute=params.tokens_per_minute)
        # An answer may be a choice's text or (in JSON) its label value.
        self.by_answer = {str(label).strip().lower(): label for label in self.spec.choices}
        self.by_answer.update({str(text).strip().lower(): label
                               for label, text in self.spec.choices.items()})
        self.provenance = Provenance(classifier=self.classifier_name, model=params.model)

    @staticmethod
    def _prompt(params: OpenAIChatParams) -> Any:
        check_url(params.base_url)
        if params.fields is not None and (not params.fields or not all(params.fields.values())):
            raise ValueError("fields must map each answer field to its allowed values")
        return params.prompt(need_choices=not params.fields)

    @classmethod
    def preflight(cls, params: OpenAIChatParams) -> None:
        cls._prompt(params)
        api_key(params.api_key_env, "openai_chat")

    async def _one(self, text: str) -> dict[str, Any] | PostFailure:
        messages = [{"role": "system", "content": self.spec.system}] if self.spec.system else []
        messages.append({"role": "user", "content": self.spec.render(text)})
        estimate = sum(len(m["content"]) for m in messages) // 4 + self.options["max_tokens"]
        data = await self.caller.post_json(
            self.url, {"model": self.model, "messages": messages, **self.options},
            self._headers, tokens=estimate, what="chat completion")
        usage = data.get("usage") or {}
        self.caller.add_tokens(int(usage.get("prompt_tokens") or 0),
                               int(usage.get("completion_tokens") or 0))
        try:
            answer = data["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            return PostFailure(reason=f"unexpected response shape: {json.dumps(data)[:200]}")
        return self.parse(answer)

    def parse(self, answer: str) -> dict[str, Any] | PostFailure:
        """Label columns from an answer, or why it is not one."""
        shown = answer[:200]
        if self.fields:
            try:
                obj = json.loads(answer)
            except ValueError:
                return PostFailure(reason=f"answer is not a JSON object: {shown!r}")
            if not isinstance(obj, dict):
                return PostFailure(reason=f"answer is not a JSON object: {shown!r}")
            out = {}
            for name, allowed in self.fields.items():
                if obj.get(name) not in allowed:
                    return PostFailure(reason=f"field {name!r} is not one of {allowed}: "
                                              f"{shown!r}")
                out[name] = obj[name]
            return out
        value: Any = answer
        if self.json_mode or answer.lstrip().startswith("{"):
            try:
                obj = json.loads(answer)
                value = obj.get("label") if isinstance(obj, dict) else obj
            except ValueError:
                return PostFailure(reason=f"answer is not valid JSON: {shown!r}")
        key = str(value).strip().lower()
        if key not in self.by_answer:
            return PostFailure(reason=f"answer is not one of the choices "
                                      f"{list(self.spec.choices.values())}: {shown!r}")
        return {"label": self.by_answer[key]}
