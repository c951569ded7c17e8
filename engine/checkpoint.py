"""Checkpoints: everything needed to resume a run on exactly the same trajectory.

A checkpoint holds the model, optimizer, scheduler and grad-scaler states, the epoch, the
history so far, the global RNG states (dropout draws from them) and the run's config. The
loader's shuffling and augmentation are re-seeded from (seed, epoch), so they need no state.
Loading uses weights_only=True: a checkpoint is data, never code.
"""
import pickle
import zipfile

import torch

from engine import atomic
from engine.errors import UserError


def rng_states():
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states):
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def unwrap(model):
    """The plain module under torch.compile / DistributedDataParallel wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def save_checkpoint(path, *, model, optimizer, scheduler, scaler, epoch, history, config,
                    best_val_accuracy):
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "history": history,
        "best_val_accuracy": best_val_accuracy,
        "rng": rng_states(),
        "config": config,
    }
    with atomic.atomic_path(path) as temporary:
        torch.save(state, temporary)


def _unpickler_reason(error):
    """The one informative line of torch's long weights_only refusal."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "Unsupported" in line or "WeightsUnpickler error" in line:
            return line.replace("WeightsUnpickler error: ", "")[:160]
    return lines[0][:160] if lines else "unpickling refused"


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint as data; a missing, corrupt or code-carrying file is a UserError."""
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}: train a run there first, or point to a run "
                        f"directory that has checkpoint.pt")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise UserError(f"refusing to load {path}: it holds objects other than tensors and plain "
                        f"data ({_unpickler_reason(error)}), which could run code; only use "
                        f"checkpoints saved by this project") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"cannot read checkpoint {path} ({first_line[:200]}): the file is truncated "
                        f"or corrupt; delete it and train again (or use --overwrite)") from None
