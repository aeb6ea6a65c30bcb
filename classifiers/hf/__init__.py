"""Classifiers on local Hugging Face models (torch): sequence classification, zero-shot
embedding prototypes, a prompted causal LM — and what they share: loading and device /
precision handling (``runtime``), length-sorted mini-batches (``batching``), where a model's
weights are (``weights``: a folder, a cached hub id, the packaged default)."""
