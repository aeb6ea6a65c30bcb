"""Shared loading and batched execution for the encoder classifiers (sequence classification,
embedding prototypes). torch and transformers are imported when a model is built."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from classifiers.hf.weights import check_model_available, resolve_model_path, weights_hash
from classifiers.params import EncoderParams
from classifiers.protocol import Provenance


class HFTextModel:
    """Loads tokenizer + model once; ``_run`` maps texts to one output row each."""

    classifier_name = "hf"

    def __init__(self, params: EncoderParams, model: str | None, model_class: Any) -> None:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        from classifiers.hf import runtime

        hf_logging.disable_progress_bar()
        runtime.use_threads(params.torch_threads)
        path = resolve_model_path(model)
        self.max_length = params.max_length
        self.mini_batch_size = params.mini_batch_size
        self.device = runtime.pick_device(params.device)
        self.dtype = runtime.autocast_dtype(self.device, params.precision)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = runtime.prepare_model(model_class.from_pretrained(path), self.device,
                                           params.quantize)
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.provenance = Provenance(classifier=self.classifier_name,
                                     model=str(model or "packaged:all-MiniLM-L6-v2"),
                                     weights_hash=weights_hash(path))

    @staticmethod
    def check_runtime(params: EncoderParams, model: str | None) -> None:
        """Preflight, without loading weights: the model is there, the device usable."""
        from classifiers.hf import runtime

        check_model_available(model)
        runtime.check_quantize(runtime.pick_device(params.device), params.quantize)

    def _run(self, texts: Sequence[str], forward: Callable[[Any, Any], Any]) -> Any:
        from classifiers.hf import batching, runtime

        ids = batching.tokenize(self.tokenizer, texts, self.max_length)
        with runtime.inference(self.device, self.dtype):
            return batching.run_sorted(ids, self.pad_id, self.mini_batch_size, self.device,
                                       forward)
