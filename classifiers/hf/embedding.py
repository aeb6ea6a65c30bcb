"""``embedding_prototypes``: zero-shot labels by cosine similarity to label descriptions.

The offline default. Each label is described by one or more sentences; posts and descriptions
are embedded with the same sentence encoder (mean-pooled, L2-normalised, as all-MiniLM-L6-v2
was trained), and a post's ``prob_<label>`` is a softmax over its similarities / temperature.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence


from classifiers.hf.base import HFTextModel
from classifiers.label_rows import label_rows
from classifiers.params import FILE, MODEL, EncoderParams, param, read_yaml_file


class EmbeddingParams(EncoderParams):
    labels: dict[str, str | list[str]] | None = param(
        None, "label name → one or more sentences describing it (or give labels_file)")
    labels_file: str | None = param(None, "a YAML file with the labels: mapping, relative to "
                                    "the config", FILE)
    model: str | None = param(None, "a sentence encoder: a local folder or a cached hub id "
                              "(default: the packaged all-MiniLM-L6-v2)", MODEL,
                              default_model=True)
    temperature: float = param(0.05, "softmax temperature over the cosine similarities", gt=0)


def load_label_descriptions(labels: Mapping[str, Sequence[str] | str] | None,
                            labels_file: str | None) -> dict[str, list[str]]:
    if labels and labels_file:
        raise ValueError("give either labels or labels_file, not both")
    if labels_file:
        labels = read_yaml_file("labels_file", labels_file).get("labels")
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
    Params = EmbeddingParams

    def __init__(self, params: EmbeddingParams) -> None:
        import torch
        from transformers import AutoModel

        descriptions = load_label_descriptions(params.labels, params.labels_file)
        super().__init__(params, params.model, AutoModel)
        self.labels = list(descriptions)
        self.temperature = params.temperature
        protos = []
        for name in self.labels:
            emb = self._run(descriptions[name], self._embed)
            protos.append(torch.nn.functional.normalize(emb.mean(dim=0), dim=-1))
        self.prototypes = torch.stack(protos)

    @classmethod
    def preflight(cls, params: EmbeddingParams) -> None:
        cls.check_runtime(params, params.model)
        load_label_descriptions(params.labels, params.labels_file)

    def _embed(self, input_ids: Any, mask: Any) -> Any:
        import torch

        hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)

    def classify(self, texts: list[str]) -> list[dict[str, Any]]:
        import torch

        if not texts:
            return []
        sims = self._run(texts, self._embed) @ self.prototypes.T
        return label_rows(self.labels, torch.softmax(sims / self.temperature, dim=-1).tolist())
