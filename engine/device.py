"""Where and in what precision to train: resolves --device and --precision."""
import contextlib

import torch

from engine.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name):
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name} asked for CUDA but none is available: use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s): "
                            f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        if device.index is not None:
            # The current device is what bf16 support is asked of, and where CUDA puts a
            # context and allocations made without an index.
            torch.cuda.set_device(device)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps asked for Apple MPS but it is not available: use --device cpu")
    return device


def resolve_precision(name, device):
    """auto: bf16 on CUDA that supports it, else fp16 on CUDA; fp32 on CPU and MPS (exact)."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def autocast(device, precision):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def grad_scaler(device, precision):
    """fp16 needs loss scaling against gradient underflow; bf16 and fp32 do not."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
