"""``hf_sequence_classification``: any checkpoint loadable by AutoModelForSequenceClassification."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from classifiers.hf_base import HFTextModel


class HFSequenceClassifier(HFTextModel):
    """Single-label (softmax → ``label`` + ``prob_<name>``) or multi-label (sigmoid →
    ``prob_<name>`` + ``label_<name>`` at per-label thresholds, default 0.5).

    ``other_label`` (multi-label only) names a label forced to 1 when every other label is 0,
    the IME rule of the tool we replace.
    """

    classifier_name = "hf_sequence_classification"

    def __init__(self, model: str, labels: Sequence[str] | None = None,
                 multi_label: bool | None = None,
                 thresholds: float | Mapping[str, float] = 0.5,
                 other_label: str | None = None, **runtime: Any) -> None:
        from transformers import AutoModelForSequenceClassification

        super().__init__(model, AutoModelForSequenceClassification, **runtime)
        cfg = self.model.config
        n = cfg.num_labels
        names = list(labels) if labels else [cfg.id2label[i] for i in range(n)]
        if len(names) != n:
            raise ValueError(f"{len(names)} label names given but the model has {n} outputs")
        self.labels = [str(x) for x in names]
        self.multi_label = (cfg.problem_type == "multi_label_classification"
                            if multi_label is None else bool(multi_label))
        if isinstance(thresholds, Mapping):
            unknown = set(thresholds) - set(self.labels)
            if unknown:
                raise ValueError(f"thresholds for unknown labels {sorted(unknown)}")
            self.thresholds = [float(thresholds.get(x, 0.5)) for x in self.labels]
        else:
            self.thresholds = [float(thresholds)] * n
        if other_label is not None and (not self.multi_label or other_label not in self.labels):
            raise ValueError("other_label must name one of the labels of a multi-label model")
        self.other_label = other_label

    def _logits(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=mask).logits

    def classify(self, texts: list[str]) -> list[dict[str, Any]]:
        if not texts:
            return []
        logits = self._run(texts, self._logits)
        if self.multi_label:
            return self._multi(torch.sigmoid(logits))
        probs = torch.softmax(logits, dim=-1)
        best = probs.argmax(dim=-1).tolist()
        return [{"label": self.labels[b],
                 **{f"prob_{name}": float(p) for name, p in zip(self.labels, row)}}
                for b, row in zip(best, probs.tolist())]

    def _multi(self, probs: torch.Tensor) -> list[dict[str, Any]]:
        rows = []
        for row in probs.tolist():
            flags = {name: int(p >= t) for name, p, t in zip(self.labels, row, self.thresholds)}
            if self.other_label and not any(v for k, v in flags.items() if k != self.other_label):
                flags[self.other_label] = 1
            out: dict[str, Any] = {f"prob_{name}": float(p) for name, p in zip(self.labels, row)}
            out.update({f"label_{name}": flag for name, flag in flags.items()})
            rows.append(out)
        return rows
