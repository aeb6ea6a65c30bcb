"""Shared loading and batched execution for classifiers built on Hugging Face models."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from classifiers import length_batching, torch_runtime
from classifiers.packaged_model import check_model_available, resolve_model_path
from classifiers.protocol import Provenance


class HFTextModel:
    """Loads tokenizer + model once; ``_run`` maps texts to one output row each."""

    classifier_name = "hf"

    def __init__(self, model: str | None, model_class: Any, max_length: int = 128,
                 mini_batch_size: int = 64, device: str = "auto", precision: str = "auto",
                 quantize: str | None = None, torch_threads: int | None = None) -> None:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if max_length < 1 or mini_batch_size < 1:
            raise ValueError("max_length and mini_batch_size must be >= 1")
        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        path = resolve_model_path(model)
        self.max_length = max_length
        self.mini_batch_size = mini_batch_size
        self.device = torch_runtime.pick_device(device)
        self.dtype = torch_runtime.autocast_dtype(self.device, precision)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = torch_runtime.prepare_model(model_class.from_pretrained(path), self.device,
                                                 quantize)
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.provenance = Provenance(classifier=self.classifier_name,
                                     model=str(model or "packaged:all-MiniLM-L6-v2"),
                                     weights_hash=torch_runtime.weights_hash(path))

    @classmethod
    def preflight(cls, params: dict[str, Any]) -> None:
        """Fail fast, without loading weights: the model is there, the runtime params are
        valid."""
        check_model_available(params.get("model"))
        device = torch_runtime.pick_device(str(params.get("device", "auto")))
        torch_runtime.autocast_dtype(device, str(params.get("precision", "auto")))
        quantize = params.get("quantize")
        if quantize not in (None, "int8"):
            raise ValueError(f"quantize must be null or 'int8', got {quantize!r}")
        torch_runtime.check_sizes(**{k: params[k] for k in ("max_length", "mini_batch_size")
                                     if k in params})

    def _run(self, texts: Sequence[str],
             forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        ids = length_batching.tokenize(self.tokenizer, texts, self.max_length)
        with torch_runtime.inference(self.device, self.dtype):
            return length_batching.run_sorted(ids, self.pad_id, self.mini_batch_size,
                                              self.device, forward)
