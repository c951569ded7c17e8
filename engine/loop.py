"""The training loop: one epoch of training, evaluation, optimizer and schedule.

Works for any nn.Module on any device. Loss and accuracy are summed on the device and read
once per epoch; the only host synchronisations inside an epoch are the progress bar's
refreshes (a few per epoch, and none when it is off).
"""
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from engine.device import autocast


def make_optimizer(param_groups, lr, weight_decay, momentum=0.9, device=None):
    """SGD with Nesterov momentum; fused kernels on CUDA, foreach elsewhere."""
    fused = device is not None and device.type == "cuda"
    return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, nesterov=True,
                           weight_decay=weight_decay, fused=fused or None,
                           foreach=None if fused else True)


def make_scheduler(optimizer, total_steps, warmup_fraction=0.15):
    """One-cycle, stepped every batch: warm up to the peak lr, then cosine down to ~0.

    Each param group's own lr is its peak, so per-group multipliers carry through.
    """
    peaks = [group["lr"] for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=peaks, total_steps=max(total_steps, 2), pct_start=warmup_fraction,
        div_factor=10.0, final_div_factor=1000.0)


def soft_or_hard_loss(logits, targets, label_smoothing):
    """Cross-entropy for class indices or soft labels (MixUp/CutMix give (B, K) floats)."""
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


def count_correct(logits, targets):
    hard = targets.argmax(dim=1) if targets.dim() == 2 else targets
    return (logits.argmax(dim=1) == hard).sum()


class ProgressBar:
    """tqdm over an epoch's steps that reads device metrics only when it refreshes."""

    def __init__(self, total, description, enabled, refreshes_per_epoch=10):
        self.bar = tqdm(total=total, desc=description, leave=False, disable=not enabled,
                        dynamic_ncols=True)
        self.every = max(1, total // refreshes_per_epoch)
        self.enabled = enabled

    def step(self, step, loss_sum, correct, seen, started):
        self.bar.update(1)
        if self.enabled and (step + 1) % self.every == 0:
            self.bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}",
                                 acc=f"{correct.item() / seen:.3f}",
                                 img_s=f"{seen / (time.perf_counter() - started):.0f}")

    def close(self):
        self.bar.close()


def train_one_epoch(model, loader, optimizer, scheduler, scaler, *, device, precision,
                    label_smoothing=0.0, progress=False, description="train", on_step=None):
    """Train for one pass over `loader`; returns loss, accuracy, images, seconds, lr.

    on_step(step, loss) is called after every step with the step's loss tensor; the
    divergence check uses it (it must not sync every step unless it has to).
    """
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    bar = ProgressBar(len(loader), description, progress)
    started = time.perf_counter()
    for step, (inputs, targets) in enumerate(loader):
        with autocast(device, precision):
            logits = model(inputs)
        loss = soft_or_hard_loss(logits, targets, label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        loss_sum += loss.detach() * len(inputs)
        correct += count_correct(logits.detach(), targets)
        seen += len(inputs)
        if on_step is not None:
            on_step(step, loss.detach())
        bar.step(step, loss_sum, correct, seen, started)
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    return {"loss": loss_sum.item() / max(seen, 1), "accuracy": correct.item() / max(seen, 1),
            "images": seen, "seconds": seconds, "lr": optimizer.param_groups[0]["lr"]}


@torch.inference_mode()
def evaluate(model, loader, *, device, precision):
    """Mean loss (plain cross-entropy) and accuracy over every image of `loader`."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    for inputs, targets in loader:
        with autocast(device, precision):
            logits = model(inputs)
        loss_sum += F.cross_entropy(logits.float(), targets, reduction="sum")
        correct += count_correct(logits, targets)
        seen += len(inputs)
    return {"loss": loss_sum.item() / max(seen, 1), "accuracy": correct.item() / max(seen, 1)}
