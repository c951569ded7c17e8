"""Checkpoints: all a run needs to resume on the same trajectory (RNG states for dropout; the
loader re-seeds itself per epoch). Loaded with weights_only=True: a checkpoint is data, never code.
"""
import pickle
import re
import zipfile

import torch

from engine import atomic
from engine.errors import UserError


def rng_states(device):
    """The CPU generator's state, and the training GPU's own (not every visible GPU's: a run
    may resume where fewer are visible, or under torchrun on another index) or MPS's (dropout
    on the device draws from it)."""
    states = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    if device.type == "mps":
        states["mps"] = torch.mps.get_rng_state()
    return states


def restore_rng_states(states, device):
    torch.set_rng_state(states["torch"])
    cuda_state = states.get("cuda")
    if device.type == "cuda" and isinstance(cuda_state, torch.Tensor):
        torch.cuda.set_rng_state(cuda_state, device)  # (a list: an older checkpoint's, all GPUs)
    if device.type == "mps" and "mps" in states:
        torch.mps.set_rng_state(states["mps"])


def unwrap(model):
    """The plain module under torch.compile / DistributedDataParallel wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def save_checkpoint(path, *, model, optimizer, scheduler, scaler, epoch, history, config,
                    best_val_accuracy, partial_epoch=None, rng_by_rank=None):
    """epoch: epochs finished; partial_epoch: the progress of an interrupted next epoch;
    rng_by_rank: every rank's RNG states under torchrun (default: this process's)."""
    rng_by_rank = rng_by_rank or [rng_states(torch.device("cpu"))]
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "history": history,
        "best_val_accuracy": best_val_accuracy,
        "partial_epoch": partial_epoch,
        "rng": rng_by_rank[0],
        "config": config,
    }
    if len(rng_by_rank) > 1:
        state["rng_by_rank"] = rng_by_rank
    with atomic.atomic_path(path) as temporary:
        torch.save(state, temporary)


def one_line(error):
    """An exception's message on one line, without the terminal colour codes torch adds."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    return " ".join(text.split()) or type(error).__name__


def _refused_global(error):
    """What a refused file tried to call, from torch's page-long weights_only message."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if found:
        return f"it calls {found.group(1)} when unpickled"
    found = re.search(r"WeightsUnpickler error: (.*?)(\. |$)", one_line(error))
    return found.group(1)[:160] if found else "it holds objects other than tensors and plain data"


def safe_load(path, what, fix):
    """torch.load(weights_only=True); any failure is a one-line UserError naming `what`, with
    `fix`. No fallback to weights_only=False: a file needing it is refused, its code never run."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            raise UserError(f"refusing to load {what}: {_refused_global(error)}, which could run "
                            f"code; only load files you trust, saved by this project") from None
        raise UserError(f"cannot read {what} ({one_line(error)[:200]}): {fix}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, AttributeError,
            ImportError, KeyError, IndexError, TypeError) as error:
        # A truncated or non-torch file fails in the zip reader (RuntimeError) or the
        # unpickler (EOFError, ValueError, ...); torch appends paragraphs of advice.
        kind, reason = type(error).__name__, one_line(error).split(". ")[0][:200]
        detail = kind if reason == kind else f"{kind}: {reason}"  # EOFError has no message
        raise UserError(f"cannot read {what} ({detail}): {fix}") from None


def load_checkpoint(path):
    """Load a checkpoint as data; a missing, corrupt or code-carrying file is a UserError."""
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}: train a run there first, or point to a run "
                        f"directory that has checkpoint.pt")
    return safe_load(path, f"checkpoint {path}",
                     "the file is truncated or corrupt; delete it and train again (or use --overwrite)")
