"""``embedding_prototypes``: zero-shot labels by cosine similarity to label descriptions.

The offline default. Each label is described by one or more sentences; posts and descriptions
are embedded with the same sentence encoder (mean-pooled, L2-normalised, as all-MiniLM-L6-v2
was trained), and a post's ``prob_<label>`` is a softmax over its similarities / temperature.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import yaml

from classifiers.hf_base import HFTextModel

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def load_label_descriptions(labels: Mapping[str, Sequence[str]] | None,
                            labels_file: str | None) -> dict[str, list[str]]:
    if labels and labels_file:
        raise ValueError("give either labels or labels_file, not both")
    if labels_file:
        path = Path(labels_file)
        if not path.is_absolute() and not path.exists():
            path = PROJECT_ROOT / labels_file  # configs/ ship with the project
        if not path.is_file():
            raise FileNotFoundError(f"labels_file {labels_file!r} not found")
        labels = yaml.safe_load(path.read_text()).get("labels")
    if not labels or len(labels) < 2:
        raise ValueError("embedding_prototypes needs at least two labels, each with "
                         "one or more description sentences")
    out = {}
    for name, sentences in labels.items():
        sentences = [sentences] if isinstance(sentences, str) else list(sentences)
        if not sentences or not all(isinstance(s, str) and s.strip() for s in sentences):
            raise ValueError(f"label {name!r} needs non-empty description sentences")
        out[str(name)] = sentences
    return out


class EmbeddingPrototypeClassifier(HFTextModel):
    classifier_name = "embedding_prototypes"

    def __init__(self, labels: Mapping[str, Sequence[str]] | None = None,
                 labels_file: str | None = None, model: str | None = None,
                 temperature: float = 0.05, **runtime: Any) -> None:
        from transformers import AutoModel

        descriptions = load_label_descriptions(labels, labels_file)
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        super().__init__(model, AutoModel, **runtime)
        self.labels = list(descriptions)
        self.temperature = temperature
        protos = []
        for name in self.labels:
            emb = self._run(descriptions[name], self._embed)
            protos.append(torch.nn.functional.normalize(emb.mean(dim=0), dim=-1))
        self.prototypes = torch.stack(protos)

    @classmethod
    def preflight(cls, params: dict[str, Any]) -> None:
        super().preflight(params)
        load_label_descriptions(params.get("labels"), params.get("labels_file"))

    def _embed(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)

    def classify(self, texts: list[str]) -> list[dict[str, Any]]:
        if not texts:
            return []
        sims = self._run(texts, self._embed) @ self.prototypes.T
        probs = torch.softmax(sims / self.temperature, dim=-1)
        best = probs.argmax(dim=-1).tolist()
        return [{"label": self.labels[b],
                 **{f"prob_{name}": float(p) for name, p in zip(self.labels, row)}}
                for b, row in zip(best, probs.tolist())]
