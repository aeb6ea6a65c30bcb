"""``hf_sequence_classification``: any checkpoint loadable by AutoModelForSequenceClassification."""
from __future__ import annotations

from typing import Any

from classifiers.hf.base import HFTextModel
from classifiers.label_rows import label_rows
from classifiers.params import MODEL, EncoderParams, param


class HFSequenceParams(EncoderParams):
    model: str = param(..., "a local checkpoint folder or a hub id in the Hugging Face cache",
                       MODEL)
    labels: list[str] | None = param(None, "label names in the model's output order "
                                     "(default: the model's id2label)")
    multi_label: bool | None = param(None, "sigmoid per label instead of one softmax "
                                     "(default: the model's problem_type)")
    thresholds: float | dict[str, float] = param(0.5, "multi-label: a label fires at or above "
                                                 "this probability (one number, or per label)")
    other_label: str | None = param(None, "multi-label: the label set to 1 when no other "
                                    "label fires (the IME 'other' rule)")


class HFSequenceClassifier(HFTextModel):
    """Single-label (softmax → ``label`` + ``prob_<name>``) or multi-label (sigmoid →
    ``prob_<name>`` + ``label_<name>`` at per-label thresholds)."""

    classifier_name = "hf_sequence_classification"
    Params = HFSequenceParams

    def __init__(self, params: HFSequenceParams) -> None:
        from transformers import AutoModelForSequenceClassification

        super().__init__(params, params.model, AutoModelForSequenceClassification)
        cfg = self.model.config
        n = cfg.num_labels
        names = list(params.labels) if params.labels else [cfg.id2label[i] for i in range(n)]
        if len(names) != n:
            raise ValueError(f"{len(names)} label names given but the model has {n} outputs")
        self.labels = [str(x) for x in names]
        self.multi_label = (cfg.problem_type == "multi_label_classification"
                            if params.multi_label is None else params.multi_label)
        if isinstance(params.thresholds, dict):
            unknown = set(params.thresholds) - set(self.labels)
            if unknown:
                raise ValueError(f"thresholds for unknown labels {sorted(unknown)}")
            self.thresholds = [float(params.thresholds.get(x, 0.5)) for x in self.labels]
        else:
            self.thresholds = [float(params.thresholds)] * n
        if params.other_label is not None and (not self.multi_label
                                               or params.other_label not in self.labels):
            raise ValueError("other_label must name one of the labels of a multi-label model")
        self.other_label = params.other_label

    @classmethod
    def preflight(cls, params: HFSequenceParams) -> None:
        cls.check_runtime(params, params.model)

    def _logits(self, input_ids: Any, mask: Any) -> Any:
        return self.model(input_ids=input_ids, attention_mask=mask).logits

    def classify(self, texts: list[str]) -> list[dict[str, Any]]:
        import torch

        if not texts:
            return []
        logits = self._run(texts, self._logits)
        if self.multi_label:
            return self._multi(torch.sigmoid(logits).tolist())
        return label_rows(self.labels, torch.softmax(logits, dim=-1).tolist())

    def _multi(self, probs: list[list[float]]) -> list[dict[str, Any]]:
        rows = []
        for row in probs:
            flags = {name: int(p >= t) for name, p, t in zip(self.labels, row, self.thresholds)}
            if self.other_label and not any(v for k, v in flags.items() if k != self.other_label):
                flags[self.other_label] = 1
            out: dict[str, Any] = {f"prob_{name}": float(p) for name, p in zip(self.labels, row)}
            out.update({f"label_{name}": flag for name, flag in flags.items()})
            rows.append(out)
        return rows
