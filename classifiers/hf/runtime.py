"""Device, precision, quantisation and inference mode for the torch-based classifiers (imports
torch: only a classifier being built or preflighted imports this)."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch


def pick_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else CPU. An explicit ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {device!r} is not a torch device; use auto, cpu, cuda or "
                         "cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but no CUDA GPU is visible; "
                         "use device: auto or cpu")
    return dev


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The reduced precision to autocast to, or None for plain fp32."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def check_quantize(device: torch.device, quantize: str | None) -> None:
    if quantize == "int8" and device.type != "cpu":
        raise ValueError("quantize: int8 is a CPU option; drop it for GPU runs")


def use_threads(torch_threads: int | None) -> None:
    if torch_threads:
        torch.set_num_threads(torch_threads)


@contextlib.contextmanager
def inference(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    with torch.inference_mode():
        if dtype is None:
            yield
        else:
            with torch.autocast(device_type=device.type, dtype=dtype):
                yield


def prepare_model(model: Any, device: torch.device, quantize: str | None = None) -> Any:
    """Eval mode on ``device``; ``quantize: int8`` applies dynamic int8 Linear layers (CPU)."""
    model.eval()
    check_quantize(device, quantize)
    if quantize == "int8":
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    return model.to(device)
