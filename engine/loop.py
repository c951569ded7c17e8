"""One epoch of training or evaluation, the optimizer and the schedule. Metrics are summed on
the device and read once per epoch: no host sync inside a step (progress refreshes aside)."""
import itertools
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from engine.device import autocast
from engine.distributed import mean_over_ranks, over_ranks


def make_optimizer(param_groups, lr, weight_decay, momentum=0.9, fused=False):
    """SGD with Nesterov momentum: fused kernels (fused=True, for CUDA), foreach otherwise."""
    optimizer = torch.optim.SGD(param_groups, lr=lr, momentum=momentum, nesterov=True,
                                weight_decay=weight_decay, fused=fused or None,
                                foreach=None if fused else True)
    if fused:
        # The fused kernel makes its momentum buffers with empty_like and returns before filling
        # them when GradScaler found an inf (fp16's first steps): zeros keep them defined and
        # give the first real step buf = grad, as a fresh buffer does.
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                optimizer.state[parameter]["momentum_buffer"] = torch.zeros_like(parameter)
    return optimizer


def load_optimizer_state(optimizer, saved_state):
    """optimizer.load_state_dict(saved_state), keeping this optimizer's fused/foreach choice:
    a run saved on a CPU and resumed on CUDA must train with CUDA's kernels."""
    kernels = [{key: group[key] for key in ("fused", "foreach")} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved_state)
    for group, choice in zip(optimizer.param_groups, kernels):
        group.update(choice)


def make_scheduler(optimizer, total_steps, warmup_fraction=0.15):
    """One-cycle per batch: warm-up to each param group's own lr (so per-group multipliers carry
    through), then cosine to ~0."""
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


def format_seconds(seconds):
    if seconds != seconds:  # nan: nothing measured yet
        return "?"
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


@dataclass
class RunClock:
    """A run's pace in this process, for its ETA: seconds per step, evaluation included."""
    total_steps: int   # over all of the run's epochs
    done: int = 0      # steps finished, those of earlier processes (a resumed run) included

    def __post_init__(self):
        self.first, self.started = self.done, time.perf_counter()

    def eta(self):
        done_here = self.done - self.first
        seconds = time.perf_counter() - self.started
        return seconds / done_here * (self.total_steps - self.done) if done_here else float("nan")


class ProgressBar:
    """tqdm over an epoch's steps on a terminal; elsewhere (a batch job's log) a plain line
    every log_every seconds. Device metrics are read only when either refreshes."""

    def __init__(self, total, description, enabled, log_every=None, clock=None,
                 refreshes_per_epoch=10):
        self.bar = tqdm(total=total, desc=description, leave=False, disable=not enabled,
                        dynamic_ncols=True)
        self.every = max(1, total // refreshes_per_epoch)
        self.enabled, self.log_every, self.clock = enabled, log_every, clock or RunClock(total)
        self.description, self.total, self.last_line = description, total, time.perf_counter()

    def step(self, step, loss_sum, correct, seen, seen_since_start, started):
        self.bar.update(1)
        self.clock.done += 1
        now = time.perf_counter()
        images_per_second = seen_since_start / (now - started)
        if self.enabled and (step + 1) % self.every == 0:
            self.bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}",
                                 acc=f"{correct.item() / seen:.3f}",
                                 img_s=f"{images_per_second:.0f}",
                                 run_eta=format_seconds(self.clock.eta()))
        elif not self.enabled and self.log_every and now - self.last_line >= self.log_every:
            self.last_line = now
            print(f"{self.description} step {step + 1}/{self.total}  loss "
                  f"{loss_sum.item() / seen:.3f}  {images_per_second:.0f} img/s  run ETA "
                  f"{format_seconds(self.clock.eta())}", flush=True)

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
        loss_sum, correct, seen = over_ranks(self.loss_sum, self.correct, self.seen)
        first_bad, = over_ranks(self.first_bad_step if self.first_bad_step >= 0 else math.inf,
                                op="min")
        return EpochState(step=self.step, loss_sum=loss_sum, correct=int(correct), seen=int(seen),
                          seconds=self.seconds, finished=self.finished,
                          first_bad_step=int(first_bad) if first_bad < math.inf else -1)

    def progress_only(self):
        """Where the epoch stands without its sums: how a rank other than 0 resumes it (the
        checkpoint's sums are global and are counted once, by rank 0)."""
        return EpochState(step=self.step, seconds=self.seconds)


def train_one_epoch(model, loader, optimizer, scheduler, scaler, *, device, precision,
                    label_smoothing=0.0, progress=False, log_every=None, clock=None,
                    description="train", should_stop=lambda: False, start=None):
    """Train from `start` (an interrupted epoch's EpochState) to the end or should_stop(); return
    the EpochState reached. Non-finite losses are only noted on the device (first_bad_step), for
    the caller to check after the epoch: no host sync per step."""
    start = start or EpochState()
    model.train()
    loss_sum = torch.tensor(start.loss_sum, device=device, dtype=torch.float32)
    correct = torch.tensor(start.correct, device=device, dtype=torch.int64)
    first_bad = torch.tensor(start.first_bad_step, device=device, dtype=torch.int64)
    seen, step = start.seen, start.step
    bar = ProgressBar(len(loader), description, progress, log_every, clock)
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
def evaluate(model, loader, *, device, precision, progress=False, description="evaluate",
             num_classes=0):
    """Mean plain cross-entropy, accuracy and image count, summed over ranks (each evaluates its
    share); with num_classes, the confusion matrix too (rows: true class, columns: predicted)."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    confusion = torch.zeros(num_classes ** 2, device=device, dtype=torch.int64)
    seen = 0
    for inputs, targets in tqdm(loader, description, leave=False, disable=not progress,
                                dynamic_ncols=True):
        with autocast(device, precision):
            logits = model(inputs)
        loss_sum += F.cross_entropy(logits.float(), targets, reduction="sum")
        correct += count_correct(logits, targets)
        if num_classes:  # not bincount: on CUDA it reads the indices' min and max on the host
            cells = targets * num_classes + logits.argmax(dim=1)
            confusion.scatter_add_(0, cells, torch.ones_like(cells))
        seen += len(inputs)
    loss_sum, correct, seen, *counts = over_ranks(loss_sum.item(), correct.item(), seen,
                                                  *confusion.tolist())
    return {"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1),
            "images": int(seen), "confusion": torch.tensor(counts, dtype=torch.int64).view(num_classes, num_classes)}


@torch.no_grad()
def recompute_batchnorm_statistics(model, loader, *, device, precision, images):
    """Re-estimate training-mode BatchNorms' statistics at the current weights over `images`
    images ("precise BN", Wu & Johnson 2021: docs/recipe.md); frozen eval-mode ones are kept.
    Under torchrun each rank measures its share of every batch and the ranks' statistics are
    averaged: `images` in all."""
    model.train()
    layers = [module for module in model.modules()
              if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
              and module.training and module.track_running_stats]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
    steps = -(-images // loader.batch_size)  # loader.batch_size is the global batch
    for step, (inputs, _) in enumerate(itertools.islice(loader, steps if layers else 0)):
        for layer in layers:
            # A cumulative average, every batch weighted alike, as momentum=None gives, but
            # without its float(num_batches_tracked): a host sync per layer and batch.
            layer.momentum = 1.0 / (step + 1)
        with autocast(device, precision):
            model(inputs)
    mean_over_ranks([statistic for layer in layers
                     for statistic in (layer.running_mean, layer.running_var)])
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
