"""``vader``: VADER sentiment (``vaderSentiment``), the original tool's valence integration.

``compound`` is VADER's normalised score in [-1, 1]; ``valence_label`` is ``positive`` when
compound >= 0.05, ``negative`` when <= -0.05, else ``neutral`` (VADER's own thresholds).
"""
from __future__ import annotations

from typing import Any

from classifiers.protocol import Provenance

THRESHOLD = 0.05


class VaderClassifier:
    classifier_name = "vader"

    def __init__(self, threshold: float = THRESHOLD) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        if not 0 <= threshold < 1:
            raise ValueError("threshold must be in [0, 1)")
        self.threshold = threshold
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
