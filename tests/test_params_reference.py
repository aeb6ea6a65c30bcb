"""Typed classifier params: the docs are generated from the declarations, a config with an
unknown or mistyped param fails at load naming it, and what changes labels is declared."""
from __future__ import annotations

import pytest

from classifiers.params import LABELS, RUNTIME
from classifiers.registry import BUILTIN, params_model, resolve_class
from jobs.config import ConfigError, parse_config
from jobs.tools import params_reference


def test_readme_classifier_reference_is_what_the_declarations_say():
    assert params_reference.in_readme(params_reference.README.read_text()) == \
        params_reference.render(), "run: python -m jobs.tools.params_reference --write"


def test_every_built_in_type_declares_its_params_with_a_meaning_and_a_kind():
    for name in BUILTIN:
        model = params_model(resolve_class(name))
        assert model is not None, name
        for param, field in model.model_fields.items():
            assert field.description, (name, param)
            assert model.kind_of(param) in ("labels", "file", "model", "runtime")


def test_speed_and_placement_params_are_declared_runtime():
    for name in ("embedding_prototypes", "llm_prompt", "openai_chat", "perspective_api"):
        model = params_model(resolve_class(name))
        for param in ("device", "mini_batch_size", "torch_threads", "max_concurrency",
                      "timeout_s", "api_key_env", "requests_per_second"):
            if param in model.model_fields:
                assert model.kind_of(param) == RUNTIME, (name, param)
        if "precision" in model.model_fields:
            assert model.kind_of("precision") == LABELS  # bf16 scores differ from fp32


@pytest.mark.parametrize("params,needle", [
    ({"temprature": 0.1}, "params.temprature: unknown param (allowed: labels, labels_file"),
    ({"temperature": "warm"}, "params.temperature: Input should be a valid number"),
    ({"mini_batch_size": 0}, "params.mini_batch_size: Input should be greater than or equal"),
])
def test_a_bad_param_fails_at_config_load_naming_the_integration_and_the_param(params,
                                                                              needle):
    raw = {"data_dir": "/tmp/x", "integrations": {"ml_inference_intergroup": {
        "code": "g", "classifier": {"type": "embedding_prototypes", "params": params}}}}
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert f"integrations.ml_inference_intergroup.classifier.{needle}" in str(err.value)
