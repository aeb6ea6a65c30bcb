"""Device, precision, quantisation and weight hashing shared by the HF-based classifiers."""
from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Any, Iterator

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def check_sizes(**sizes: Any) -> None:
    """Batch and length params must be whole numbers >= 1."""
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")


def pick_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else CPU. An explicit ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but no CUDA GPU is visible; "
                         "use device: auto or cpu")
    return dev


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The reduced precision to autocast to, or None for plain fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


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
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be null or 'int8', got {quantize!r}")
    if quantize == "int8":
        if device.type != "cpu":
            raise ValueError("quantize: int8 is a CPU option; drop it for GPU runs")
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    return model.to(device)


def weights_hash(model_dir: str | Path) -> str:
    """Short content hash of a local checkpoint's weight files (empty for hub ids)."""
    root = Path(model_dir)
    if not root.is_dir():
        return ""
    h = hashlib.blake2b(digest_size=6)
    for f in sorted(root.glob("*")):
        if f.suffix in (".safetensors", ".bin") and f.is_file():
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
    return h.hexdigest()
