"""The training recipe as a reader of README.md would write it, in plain PyTorch: the witness
that tests/test_science.py holds the engine's runs against. Nothing here comes from engine/:
every constant is the README's, written out, so that a drift in the engine shows as a
difference in loss or weights.

README, part (a): SGD with Nesterov momentum 0.9 and weight decay 5e-4 on every parameter; a
one-cycle schedule per step (torch's OneCycleLR) from a tenth of the peak, warming up over 15%
of the steps, then cosine down to a ten-thousandth of it; the peak 0.2 at batch 512, times
sqrt(batch / 512) at another batch; cross-entropy with label smoothing 0.1; each image
normalised by the training split's own channel means and standard deviations; a 4-pixel
zero-padded random crop and a horizontal flip per image; before every evaluation, BatchNorm
statistics re-estimated at the current weights as the plain average over up to 2,048 training
images. Part (b): the same, with the peak 0.05 at batch 256, no label smoothing and no
augmentation (its `scratch` configuration: random init, the data's own statistics, no layer
frozen). Validation and test losses are plain cross-entropy.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Recipe:
    peak_lr: float          # at reference_batch images per step
    reference_batch: int
    label_smoothing: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.15

    def lr(self, batch_size):
        return self.peak_lr * math.sqrt(batch_size / self.reference_batch)


SCRATCH = Recipe(peak_lr=0.2, reference_batch=512, label_smoothing=0.1)
TRANSFER = Recipe(peak_lr=0.05, reference_batch=256, label_smoothing=0.0)
BATCHNORM_IMAGES = 2048


def channel_statistics(images):
    """Per-channel mean and (population) standard deviation of uint8 images, on [0, 1]."""
    pixels = images.double() / 255
    return pixels.mean(dim=(0, 2, 3)), pixels.std(dim=(0, 2, 3), correction=0)


def is_crop_and_flip(inputs, outputs, padding=4):
    """Per image: is the output one of the (2 * padding + 1)^2 crops of the zero-padded input,
    flipped left-right or not?"""
    side = inputs.shape[-1]
    windows = F.pad(inputs, [padding] * 4).unfold(2, side, 1).unfold(3, side, 1)
    return torch.stack([(crops == image[:, None, None]).all(dim=(0, 3, 4)).any()
                        | (crops == image.flip(-1)[:, None, None]).all(dim=(0, 3, 4)).any()
                        for crops, image in zip(windows, outputs)])


def train(model, train_images, epochs, recipe, batch_size, test):
    """Train `model` on epochs = [(training batches, BatchNorm batches)], each batch a pair
    (uint8 images, labels) as the network sees them (augmented); after each epoch re-estimate
    BatchNorm and evaluate on test = (uint8 images, labels). Returns one row per epoch."""
    mean, std = (value.float().view(1, 3, 1, 1) for value in channel_statistics(train_images))

    def normalise(images):
        # channels_last, as the README's recipe: the same kernels, so the same rounding (short
        # runs of tiny networks amplify a difference in the last bit to whole percent)
        return ((images.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)

    model.to(memory_format=torch.channels_last)

    peak = recipe.lr(batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=peak, momentum=recipe.momentum,
                                nesterov=True, weight_decay=recipe.weight_decay)
    steps = sum(len(batches) for batches, _ in epochs)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=peak, total_steps=steps, pct_start=recipe.warmup_fraction,
        div_factor=10, final_div_factor=1000)
    rows = []
    for batches, batchnorm_batches in epochs:
        model.train()
        loss_sum, seen = 0.0, 0
        for images, labels in batches:
            loss = F.cross_entropy(model(normalise(images)), labels,
                                   label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum, seen = loss_sum + loss.item() * len(labels), seen + len(labels)
        re_estimate_batchnorm(model, [normalise(images) for images, _ in batchnorm_batches])
        model.eval()
        with torch.no_grad():
            logits = model(normalise(test[0]))
        # lr as history.csv has it: the optimiser's after the epoch's last step
        rows.append({"lr": optimizer.param_groups[0]["lr"], "train_loss": loss_sum / seen,
                     "test_loss": F.cross_entropy(logits, test[1]).item(),
                     "test_accuracy": (logits.argmax(1) == test[1]).double().mean().item()})
    return rows


@torch.no_grad()
def re_estimate_batchnorm(model, batches):
    """Running statistics = the plain average of per-batch statistics over the first 2,048
    images of `batches`, at the current weights, in training mode."""
    model.train()
    layers = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average
    seen = 0
    for inputs in batches:
        if seen >= BATCHNORM_IMAGES:
            break
        model(inputs)
        seen += len(inputs)
    for layer in layers:
        layer.momentum = 0.1
