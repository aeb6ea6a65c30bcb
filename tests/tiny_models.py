"""Tiny random-weight BERT checkpoints saved to disk, with the packaged MiniLM tokenizer."""
from __future__ import annotations

from pathlib import Path


def save_tiny_models(root: Path) -> dict[str, str]:
    import torch
    from transformers import (AutoTokenizer, BertConfig, BertForSequenceClassification,
                              BertModel)

    from classifiers.hf.weights import packaged_minilm_path

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(packaged_minilm_path())
    base = dict(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    labels = ["emotion", "intergroup", "moral", "other"]
    specs = {
        "single": BertForSequenceClassification(BertConfig(
            **base, num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"},
            label2id={"neg": 0, "neu": 1, "pos": 2})),
        "multi": BertForSequenceClassification(BertConfig(
            **base, num_labels=4, problem_type="multi_label_classification",
            id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)})),
        "encoder": BertModel(BertConfig(**base)),
    }
    paths = {}
    for name, model in specs.items():
        path = root / name
        model.save_pretrained(path)
        tok.save_pretrained(path)
        paths[name] = str(path)
    return paths
