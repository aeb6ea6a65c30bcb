"""Tokenise once, run the model on length-sorted mini-batches padded to their own longest.

Padding every post to ``max_length`` (or to the longest post of an unsorted batch) spends most
of the model's work on pad tokens; sorting by length first keeps each mini-batch tight.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

# WordPiece/BPE tokens cover at least one character; cutting far beyond max_length tokens
# keeps a 1 MB post from costing a full tokenisation without changing the truncated result.
CHARS_PER_TOKEN_BOUND = 50


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    cut = max_length * CHARS_PER_TOKEN_BOUND
    enc = tokenizer([t[:cut] for t in texts], truncation=True, max_length=max_length,
                    padding=False, return_attention_mask=False, return_token_type_ids=False)
    return enc["input_ids"]


def run_sorted(ids: list[list[int]], pad_id: int, mini_batch_size: int,
               device: torch.device, forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
               ) -> torch.Tensor:
    """Apply ``forward(input_ids, attention_mask) -> [B, ...]`` in length order; rows come
    back in input order."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
    outputs: list[torch.Tensor] = [None] * len(ids)  # type: ignore[list-item]
    for start in range(0, len(order), mini_batch_size):
        chunk = order[start:start + mini_batch_size]
        longest = len(ids[chunk[0]])
        input_ids = torch.full((len(chunk), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), longest), dtype=torch.long)
        for row, i in enumerate(chunk):
            n = len(ids[i])
            input_ids[row, :n] = torch.tensor(ids[i], dtype=torch.long)
            mask[row, :n] = 1
        out = forward(input_ids.to(device), mask.to(device)).float().cpu()
        for row, i in enumerate(chunk):
            outputs[i] = out[row]
    return torch.stack(outputs) if outputs else torch.empty(0)
