"""``llm_prompt``: a causal language model answers a prompt from a closed set of answers.

Each post is scored, not generated: the log-probability of every answer's tokens right after
the prompt (teacher forcing; a multi-token answer's token log-probs are summed), all in one
forward pass per mini-batch. ``label`` is the best answer's label value and
``prob_<label>`` the softmax over the answers' sequence log-probs.

The prompt is split at ``{text}``: the part before it (definition and few-shot examples,
hundreds of tokens, the same for every post) runs through the model once per classifier
instance, and its key/value cache is reused by every mini-batch, so per post only the post,
the template's suffix and the answers are computed. Rows are right-padded, so padding never
shifts a real token's position and the cached and uncached results agree exactly.

Pieces are tokenised separately (prefix, post, suffix, each answer) and concatenated as
token ids, so a BPE tokenizer can never merge an answer into the prompt's last token.
"""
from __future__ import annotations

import copy
import inspect
from typing import Any

from pydantic import BaseModel

from classifiers.hf.weights import check_model_available, resolve_model_path, weights_hash
from classifiers.label_rows import label_rows
from classifiers.params import MODEL, RUNTIME, TorchParams, param
from classifiers.prompts import PromptParams, PromptSpec
from classifiers.protocol import Provenance

SLOT = "\ufffcPOST\ufffc"  # stands in for the post while a chat template is rendered


class PromptPieces(BaseModel):
    prefix: list[int]
    suffix: list[int]
    answers: list[list[int]]  # in the order of the spec's choices


def prompt_pieces(tokenizer: Any, spec: PromptSpec, chat: bool) -> PromptPieces:
    """Token ids of the shared prefix, the suffix after the post and each answer."""
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat: true, but the model's tokenizer has no chat template; "
                             "use chat: false and write the whole prompt in template")
        messages = [{"role": "system", "content": spec.system}] if spec.system else []
        messages.append({"role": "user", "content": spec.prefix + SLOT + spec.suffix})
        rendered = tokenizer.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=True)
        if rendered.count(SLOT) != 1:
            raise ValueError("the chat template did not keep the post's place in the prompt")
        before, after = rendered.split(SLOT)
        prefix = _ids(tokenizer, before)
    else:  # a raw prompt: the system text, if any, opens it
        before = (spec.system + "\n\n" if spec.system else "") + spec.prefix
        after = spec.suffix
        prefix = _bos(tokenizer) + _ids(tokenizer, before)
    answers = [_ids(tokenizer, text) for text in spec.choices.values()]
    if any(not a for a in answers):
        raise ValueError("an answer text tokenises to nothing")
    if len({tuple(a) for a in answers}) != len(answers):
        raise ValueError("two choices tokenise to the same answer tokens; make the answer "
                         "texts differ")
    return PromptPieces(prefix=prefix, suffix=_ids(tokenizer, after), answers=answers)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def _bos(tokenizer: Any) -> list[int]:
    """The start token, when this tokenizer puts one in front of plain text."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    return [bos] if tokenizer("x")["input_ids"][:1] == [bos] else []


class LLMPromptParams(PromptParams, TorchParams):
    model: str = param(..., "a causal LM: a local folder or a hub id in the Hugging Face cache",
                       MODEL)
    chat: bool = param(False, "true: render through the tokenizer's chat template and score "
                       "the answer as the assistant's first tokens; false: the raw template")
    max_post_tokens: int = param(256, "only the post is cut to this (never the instructions, "
                                 "the suffix or the answers)", ge=1)
    mini_batch_size: int = param(32, "posts per forward pass (length-sorted)", RUNTIME, ge=1)
    prompt_cache: bool = param(True, "reuse the shared prompt's key/value cache (exact)",
                               RUNTIME)


class LLMPromptClassifier:
    classifier_name = "llm_prompt"
    Params = LLMPromptParams

    def __init__(self, params: LLMPromptParams) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from classifiers.hf import runtime

        hf_logging.disable_progress_bar()
        runtime.use_threads(params.torch_threads)
        self.spec = params.prompt()
        path = resolve_model_path(params.model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.pieces = prompt_pieces(self.tokenizer, self.spec, params.chat)
        self.labels = list(self.spec.choices)
        self.max_post_tokens = params.max_post_tokens
        self.mini_batch_size = params.mini_batch_size
        self.device = runtime.pick_device(params.device)
        # Reduced precision on a GPU: load the weights in it (half the memory, no autocast).
        dtype = runtime.autocast_dtype(self.device, params.precision) or torch.float32
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        self.lm = lm.eval().to(self.device)
        self.base = getattr(lm, lm.base_model_prefix)
        # transformers 5.x calls the key/value cache ``cache``; 4.x ``past_key_values``.
        self.cache_kw = ("cache" if "cache" in inspect.signature(self.base.forward).parameters
                         else "past_key_values")
        self.head = lm.get_output_embeddings()
        self.softcap = getattr(lm.config, "final_logit_softcapping", None)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id or 0
        self.single_token = all(len(a) == 1 for a in self.pieces.answers)
        self.prefix = torch.tensor([self.pieces.prefix], dtype=torch.long, device=self.device)
        self.prefix_cache = (self._run_prefix() if params.prompt_cache and self.pieces.prefix
                             else None)
        self.provenance = Provenance(classifier=self.classifier_name, model=params.model,
                                     weights_hash=weights_hash(path))

    @classmethod
    def preflight(cls, params: LLMPromptParams) -> None:
        """Everything but the weights: prompt, model present, tokenizer fits the prompt."""
        from transformers import AutoTokenizer

        from classifiers.hf import runtime

        spec = params.prompt()
        runtime.pick_device(params.device)
        check_model_available(params.model)
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(params.model))
        prompt_pieces(tokenizer, spec, params.chat)

    # -- scoring ---------------------------------------------------------------------------
    def classify(self, texts: list[str]) -> list[dict[str, Any]]:
        import torch

        if not texts:
            return []
        scores = self.choice_logprobs(texts)
        return label_rows(self.labels, torch.softmax(scores, dim=-1).tolist())

    def choice_logprobs(self, texts: list[str], use_cache: bool = True) -> Any:
        """[posts, choices] summed answer-token log-probs, posts in input order."""
        import torch

        from classifiers.hf import batching

        cut = self.max_post_tokens * batching.CHARS_PER_TOKEN_BOUND
        posts = self.tokenizer([t[:cut] for t in texts], add_special_tokens=False,
                               truncation=True, max_length=self.max_post_tokens)["input_ids"]
        tails = [p + self.pieces.suffix for p in posts]
        with torch.inference_mode():
            return batching.run_sorted(
                tails, self.pad_id, self.mini_batch_size, self.device,
                lambda ids, mask: self._score(ids, mask, use_cache))

    def _score(self, tails: Any, mask: Any, use_cache: bool) -> Any:
        import torch

        n_rows, n_choices = tails.shape[0], len(self.pieces.answers)
        lens = mask.sum(dim=1)
        if self.single_token:  # one row per post: the answers are the next token
            hidden = self._hidden(tails, mask, use_cache)
            last = hidden[torch.arange(n_rows, device=hidden.device), lens - 1]
            first = torch.tensor([a[0] for a in self.pieces.answers], device=hidden.device)
            return self._logprobs(last)[:, first]
        # One row per (post, answer): the tail followed by that answer's tokens.
        width = tails.shape[1] + max(len(a) for a in self.pieces.answers)
        rows = torch.full((n_rows * n_choices, width), self.pad_id, dtype=torch.long)
        rmask = torch.zeros_like(rows)
        where, targets, owner = [], [], []
        for i in range(n_rows):
            n = int(lens[i])
            for c, answer in enumerate(self.pieces.answers):
                r = i * n_choices + c
                rows[r, :n] = tails[i, :n].cpu()
                rows[r, n:n + len(answer)] = torch.tensor(answer)
                rmask[r, :n + len(answer)] = 1
                for k, token in enumerate(answer):  # position n-1+k predicts answer[k]
                    where.append((r, n - 1 + k))
                    targets.append(token)
                    owner.append(r)
        hidden = self._hidden(rows.to(self.device), rmask.to(self.device), use_cache)
        idx = torch.tensor(where, device=hidden.device)
        logp = self._logprobs(hidden[idx[:, 0], idx[:, 1]])
        picked = logp[torch.arange(len(targets), device=logp.device),
                      torch.tensor(targets, device=logp.device)]
        sums = torch.zeros(n_rows * n_choices, device=logp.device, dtype=picked.dtype)
        sums.index_add_(0, torch.tensor(owner, device=logp.device), picked)
        return sums.view(n_rows, n_choices)

    def _logprobs(self, hidden: Any) -> Any:
        import torch

        logits = self.head(hidden).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return torch.log_softmax(logits, dim=-1)

    def _hidden(self, ids: Any, mask: Any, use_cache: bool) -> Any:
        """Last hidden states of ``ids`` (right-padded) read after the shared prefix."""
        import torch

        n, p = ids.shape[0], self.prefix.shape[1]
        full_mask = torch.cat([torch.ones(n, p, dtype=mask.dtype, device=mask.device), mask], 1)
        if use_cache and self.prefix_cache is not None:
            out = self.base(input_ids=ids, attention_mask=full_mask, use_cache=True,
                            **{self.cache_kw: self._cache_for(n)})
            return out.last_hidden_state
        full = torch.cat([self.prefix.expand(n, p), ids], dim=1)
        out = self.base(input_ids=full, attention_mask=full_mask, use_cache=False)
        return out.last_hidden_state[:, p:]

    def _run_prefix(self) -> Any:
        import torch

        with torch.inference_mode():
            out = self.base(input_ids=self.prefix, use_cache=True)
        cache = getattr(out, "cache", None)
        return cache if cache is not None else out.past_key_values

    def _cache_for(self, n: int) -> Any:
        """A fresh copy of the prefix cache for ``n`` rows (the model appends to it)."""
        cache = copy.copy(self.prefix_cache)
        cache.layers = [copy.copy(layer) for layer in self.prefix_cache.layers]
        for layer in cache.layers:  # views: a layer's update concatenates, never writes in
            layer.keys = layer.keys.expand(n, -1, -1, -1)
            layer.values = layer.values.expand(n, -1, -1, -1)
        return cache
