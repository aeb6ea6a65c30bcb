"""``vader``: VADER sentiment (``vaderSentiment``), the original tool's valence integration.

``compound`` is VADER's normalised score in [-1, 1]; ``valence_label`` is ``positive`` when
compound >= threshold, ``negative`` when <= -threshold, else ``neutral``.
"""
from __future__ import annotations

from typing import Any

from classifiers.params import ClassifierParams, param
from classifiers.protocol import Provenance


class VaderParams(ClassifierParams):
    threshold: float = param(0.05, "compound at or beyond ±threshold is positive/negative "
                             "(VADER's own cut-off)", ge=0, lt=1)


class VaderClassifier:
    classifier_name = "vader"
    Params = VaderParams

    def __init__(self, params: VaderParams) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.threshold = params.threshold
        self.analyzer = SentimentIntensityAnalyzer()
        self.provenance = Provenance(classifier=self.classifier_name, model="vaderSentiment-3.3.2")

    def classify(self, texts: list[str]) -> list[dict[str, Any]]:
        rows = []
        for text in texts:
            compound = float(self.analyzer.polarity_scores(text)["compound"])
            label = ("positive" if compound >= self.threshold
                     else "negative" if compound <= -self.threshold else "neutral")
            rows.append({"compound": compound, "valence_label": label})
        return rows
