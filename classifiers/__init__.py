"""Classifiers and what runs them: the protocol, typed params, the registry, ``config_hash``,
poison and crash isolation, the secret scrubber, and the built-in types (embedding
prototypes, HF sequence classification, llm_prompt, hosted models, VADER, constant).

Plain Python — no Ray. May import ``queue_store`` (row shapes, helpers); never ``actors`` or
``jobs``. torch and transformers are imported only when a model is built, so reading a
config (and its typed params) stays fast.
"""
