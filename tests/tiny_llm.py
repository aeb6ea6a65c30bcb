"""A tiny random-weight causal LM (Qwen2-style) with a small byte-level BPE tokenizer and a
ChatML chat template, saved as a normal Hugging Face folder (so the real loading code runs).
Used by the llm_prompt tests and by ``benchmarks/llm_bench.py``."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def corpus() -> list[str]:
    """Text like what the tokenizer will see: the shipped prompt and demo-style posts."""
    import random

    from jobs.tools.demo_data import make_text

    rng = random.Random(0)
    lines = (ROOT / "configs" / "prompts" / "intergroup.yaml").read_text().splitlines()
    return lines + [make_text(rng) for _ in range(3000)]


def build_tokenizer(vocab_size: int = 1000, chat: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=SPECIALS[0],
                                   pad_token=SPECIALS[0],
                                   additional_special_tokens=SPECIALS[1:])
    if chat:
        fast.chat_template = CHATML
    return fast


def save_tiny_llm(path: Path, layers: int = 2, hidden: int = 64, heads: int = 4,
                  kv_heads: int = 2, chat: bool = True, seed: int = 0,
                  vocab_size: int = 1000) -> str:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = build_tokenizer(vocab_size, chat)
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 4,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, max_position_embeddings=4096,
                         tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():  # a sharper random model: answers' probabilities differ visibly
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)
