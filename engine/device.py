"""Where and in what precision to train: resolves --device and --precision."""
import contextlib

import torch

from engine.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name):
    if name == "auto":
        name = ("cuda" if torch.cuda.is_available() else
                "mps" if torch.backends.mps.is_available() else "cpu")
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
        check_kernels_for(device)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps asked for Apple MPS but it is not available: use --device cpu")
    return device


def _runs_on(arch, capability):
    """Whether a build's arch (sm_XY: binary code for X.Y up to X.9; compute_XY: PTX, compiled
    at load for X.Y and newer) runs on a GPU of this (major, minor) compute capability."""
    kind, _, version = arch.partition("_")
    built = divmod(int(version.rstrip("af")), 10)  # sm_90a, sm_100f: arch-specific variants
    return built <= capability and (kind == "compute" or built[0] == capability[0])


def check_kernels_for(device):
    """Refuse at start, in one line, a GPU this torch build has no kernels for (torch only
    warns, and the first kernel fails with "no kernel image is available")."""
    capability, archs = torch.cuda.get_device_capability(device), torch.cuda.get_arch_list()
    if archs and not any(_runs_on(arch, capability) for arch in archs):
        raise UserError(f"{torch.cuda.get_device_name(device)} (compute capability "
                        f"{capability[0]}.{capability[1]}) has no kernels in this torch "
                        f"{torch.__version__}, built for {' '.join(archs)}: install a torch "
                        f"build for it (pytorch.org/get-started/locally), or use --device cpu")


def resolve_precision(name, device):
    """auto: bf16 on a GPU that computes it natively (compute capability 8.0 and newer), else
    fp16 on CUDA; fp32 on CPU and MPS (exact). Emulated bf16 (7.x: T4, V100) would run without
    tensor cores, and inductor, which asks without emulation, would not compile it."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return "fp32"


def autocast(device, precision):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def grad_scaler(device, precision):
    """fp16 needs loss scaling against gradient underflow; bf16 and fp32 do not."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
