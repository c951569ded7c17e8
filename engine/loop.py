"""The training loop: one epoch of training, evaluation, optimizer and schedule.

Works for any nn.Module on any device. Loss and accuracy are summed on the device and read
once per epoch; the only host synchronisations inside an epoch are the progress bar's
refreshes (a few per epoch, and none when it is off).
"""
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from engine.device import autocast
from engine.distributed import min_over_ranks, sum_over_ranks


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

    def step(self, step, loss_sum, correct, seen, seen_since_start, started):
        self.bar.update(1)
        if self.enabled and (step + 1) % self.every == 0:
            self.bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}",
                                 acc=f"{correct.item() / seen:.3f}",
                                 img_s=f"{seen_since_start / (time.perf_counter() - started):.0f}")

    def close(self):
        self.bar.close()


@dataclass
class EpochState:
    """Where an epoch's training stands: plain numbers, so a checkpoint can hold them."""
    step: int = 0             # batches done
    loss_sum: float = 0.0     # summed over images
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0
    first_bad_step: int = -1  # first step whose loss was not finite (-1: none)
    finished: bool = False

    @property
    def loss(self):
        return self.loss_sum / max(self.seen, 1)

    @property
    def accuracy(self):
        return self.correct / max(self.seen, 1)

    def summed_over_ranks(self):
        """The whole global batch's figures (each rank trained on its own slice); the same
        steps and finish on every rank, which stop together."""
        loss_sum, correct, seen = sum_over_ranks(self.loss_sum, self.correct, self.seen)
        no_bad_step = 2 ** 62
        first_bad = min_over_ranks(self.first_bad_step if self.first_bad_step >= 0 else no_bad_step)
        return EpochState(step=self.step, loss_sum=loss_sum, correct=int(correct), seen=int(seen),
                          seconds=self.seconds, finished=self.finished,
                          first_bad_step=first_bad if first_bad != no_bad_step else -1)

    def progress_only(self):
        """Where the epoch stands without its sums: how a rank other than 0 resumes it (the
        checkpoint's sums are global and are counted once, by rank 0)."""
        return EpochState(step=self.step, seconds=self.seconds)


def train_one_epoch(model, loader, optimizer, scheduler, scaler, *, device, precision,
                    label_smoothing=0.0, progress=False, description="train",
                    should_stop=lambda: False, start=None):
    """Train over `loader` (from `start`, an EpochState of an interrupted epoch); return the
    EpochState reached: finished, or stopped early because should_stop() turned true.

    Non-finite losses are noted on the device (first_bad_step) and checked by the caller at
    the end of the epoch, so the check costs no synchronisation per step.
    """
    start = start or EpochState()
    model.train()
    loss_sum = torch.tensor(start.loss_sum, device=device, dtype=torch.float32)
    correct = torch.tensor(start.correct, device=device, dtype=torch.int64)
    first_bad = torch.tensor(start.first_bad_step, device=device, dtype=torch.int64)
    seen, step = start.seen, start.step
    bar = ProgressBar(len(loader), description, progress)
    bar.bar.update(step)
    started = time.perf_counter()
    for inputs, targets in loader.batches(start_step=step):
        with autocast(device, precision):
            logits = model(inputs)
        loss = soft_or_hard_loss(logits, targets, label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        loss = loss.detach()
        loss_sum += loss * len(inputs)
        correct += count_correct(logits.detach(), targets)
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step, first_bad)
        seen += len(inputs)
        bar.step(step, loss_sum, correct, seen, seen - start.seen, started)
        step += 1
        if should_stop() and step < len(loader):
            break
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return EpochState(step=step, loss_sum=loss_sum.item(), correct=int(correct.item()), seen=seen,
                      seconds=start.seconds + time.perf_counter() - started,
                      first_bad_step=int(first_bad.item()), finished=step == len(loader))


@torch.inference_mode()
def evaluate(model, loader, *, device, precision):
    """Mean loss (plain cross-entropy), accuracy and image count over every image of
    `loader`, summed over ranks when each rank evaluates its own share of a split."""
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
    loss_sum, correct, seen = sum_over_ranks(loss_sum.item(), correct.item(), seen)
    return {"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1), "images": int(seen)}


@torch.no_grad()
def recompute_batchnorm_statistics(model, loader, *, device, precision, images):
    """Re-estimate every training BatchNorm layer's running statistics for the current
    weights ("precise BN", Wu & Johnson 2021): the plain mean of the per-batch statistics
    over the first `images` training images of `loader` (all ranks together), in training
    mode as the steps saw them. Why: the running average lags weights that move fast; after
    a few dozen steps it still holds statistics of far earlier weights and evaluation goes
    wrong (digits at batch 512, 8 steps: 11% test accuracy with it, 47% re-estimated).
    Layers kept in eval mode (frozen, with ImageNet statistics) are left alone."""
    model.train()
    layers = [module for module in model.modules()
              if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
              and module.training and module.track_running_stats]
    if not layers or images <= 0:
        return
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # None: a cumulative average, every batch weighted alike
    steps = -(-images // loader.batch_size)  # loader.batch_size is the global batch
    for step, (inputs, _) in enumerate(loader):
        if step == steps:
            break
        with autocast(device, precision):
            model(inputs)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
