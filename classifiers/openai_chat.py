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
from typing import Any, Mapping, Sequence

from classifiers.hosted_calls import HostedCaller, api_key, check_url
from classifiers.prompt_spec import PromptSpec, load_prompt
from classifiers.protocol import PostFailure, Provenance


class OpenAIChatClassifier:
    classifier_name = "openai_chat"

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY",
                 prompt_file: str | None = None, template: str | None = None,
                 choices: Mapping[Any, str] | None = None, system: str | None = None,
                 fields: Mapping[str, Sequence[Any]] | None = None, json_mode: bool = False,
                 temperature: float = 0.0, max_tokens: int = 16, seed: int | None = None,
                 timeout_s: float = 30.0, max_concurrency: int = 16,
                 requests_per_minute: float | None = None,
                 tokens_per_minute: float | None = None, max_retries: int = 5,
                 max_retry_wait_s: float = 60.0, retry_budget_s: float = 300.0,
                 cost_per_1k_prompt_tokens: float = 0.0,
                 cost_per_1k_completion_tokens: float = 0.0) -> None:
        self.spec = self.check(prompt_file, template, choices, system, fields, base_url, model)
        self.url = check_url(base_url) + "/chat/completions"
        self.model = model
        key = api_key(api_key_env, "openai_chat")
        self._headers = {"Authorization": f"Bearer {key}"}
        self.fields = {k: list(v) for k, v in (fields or {}).items()}
        self.json_mode = json_mode
        self.options: dict[str, Any] = {"temperature": temperature, "max_tokens": max_tokens}
        if seed is not None:
            self.options["seed"] = seed
        if json_mode:
            self.options["response_format"] = {"type": "json_object"}
        self.caller = HostedCaller(max_concurrency, requests_per_minute, None,
                                   tokens_per_minute, max_retries, timeout_s, api_key_env, key,
                                   max_retry_wait_s, retry_budget_s)
        # An answer may be a choice's text or (in JSON) its label value.
        self.by_answer = {str(label).strip().lower(): label for label in self.spec.choices}
        self.by_answer.update({str(text).strip().lower(): label
                               for label, text in self.spec.choices.items()})
        self.provenance = Provenance(classifier=self.classifier_name, model=model)

    @staticmethod
    def check(prompt_file: str | None, template: str | None, choices: Any, system: Any,
              fields: Any, base_url: str, model: str) -> PromptSpec:
        if not model:
            raise ValueError("openai_chat needs model: the model name the endpoint serves")
        check_url(base_url)
        if fields is not None and (not isinstance(fields, Mapping) or not fields or not all(
                isinstance(v, (list, tuple)) and v for v in fields.values())):
            raise ValueError("fields must map each answer field to its allowed values")
        return load_prompt(prompt_file, template, choices, system, need_choices=not fields)

    @classmethod
    def preflight(cls, params: dict[str, Any]) -> None:
        cls.check(params.get("prompt_file"), params.get("template"), params.get("choices"),
                  params.get("system"), params.get("fields"), params.get("base_url", ""),
                  params.get("model", ""))
        api_key(params.get("api_key_env", "OPENAI_API_KEY"), "openai_chat")

    def classify(self, texts: list[str]) -> list[dict[str, Any] | PostFailure]:
        return self.caller.map_posts(self._one, texts)

    def usage(self) -> dict[str, int]:
        return self.caller.usage()

    def status(self) -> dict[str, str]:
        return self.caller.status()

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
