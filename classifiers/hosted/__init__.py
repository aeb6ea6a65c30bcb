"""Classifiers that call hosted models over HTTP — an OpenAI-compatible chat endpoint, the
Perspective API — on one shared caller (``calls``: concurrency, rate budgets, capped retries,
scrubbed errors)."""
