"""The CUDA path on a GPU: the fast path trains the plain function, resume is exact with
--deterministic, batched augmentation equals its CPU result, the loader repeats per seed,
and a training step never waits for the host. Skipped without a GPU (tests/conftest.py);
benchmarks/gpu_check.py runs them.
"""
import copy
import csv
import subprocess
import time

import pytest
import torch
import torch.nn as nn

from conftest import QUICK, run_script, start_script
from engine import augment
from engine.device import autocast, grad_scaler
from engine.loader import DeviceLoader, Normalizer, channel_stats
from engine.loop import make_optimizer, make_scheduler, train_one_epoch
from engine.sources import make_synthetic
from test_fast_path import narrow_model, plain_inputs, project_loss

pytestmark = pytest.mark.cuda
GPU = torch.device("cuda")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    train, _ = make_synthetic(train_size=512, test_size=8)
    return train


def stats_of(images):
    return channel_stats(images)


# --- the fast path on the GPU trains the function the plain path trains on the CPU ----------

def gradients(model):
    return {name: parameter.grad.float().cpu() for name, parameter in model.named_parameters()}


@pytest.mark.parametrize("precision, loss_rtol, grad_tol", [
    ("fp32", 1e-3, 1e-2),   # cuDNN convolutions in fp32 use TF32 (10-bit mantissa) by default
    ("bf16", 2e-2, 1e-1),   # 8-bit mantissa through ~20 layers
])
def test_fast_path_on_the_gpu_trains_the_plain_cpu_function(data, precision, loss_rtol, grad_tol):
    images, labels = data.images[:16], data.labels[:16]
    stats = stats_of(data.images)
    model = narrow_model()
    plain = copy.deepcopy(model).train()
    plain_loss = nn.CrossEntropyLoss()(plain(plain_inputs(images, stats)), labels)
    plain_loss.backward()

    fast = copy.deepcopy(model).to(GPU, memory_format=torch.channels_last).train()
    with autocast(GPU, precision):
        logits = fast(Normalizer(*stats, GPU)(images.to(GPU)))
    fast_loss = project_loss(logits, labels.to(GPU))
    fast_loss.backward()
    torch.testing.assert_close(fast_loss.cpu(), plain_loss.detach(), rtol=loss_rtol, atol=0)
    got, expected = gradients(fast), gradients(plain)
    for name in expected:
        scale = expected[name].abs().max().item()
        assert (got[name] - expected[name]).abs().max().item() <= grad_tol * scale + 1e-12, name


# --- kill + --resume on the GPU with --deterministic ----------------------------------------

RUN = [*QUICK[:4], "--device", "cuda", "--deterministic", "--dropout", "0.2", "--subset", "4000",
       "--val-size", "200", "--batch-size", "16", "--epochs", "2", "--seed", "5", "--no-progress"]


def history(run):
    with open(run / "history.csv", newline="") as handle:
        return [{key: value for key, value in row.items()
                 if key not in ("seconds", "images_per_second")} for row in csv.DictReader(handle)]


def test_a_run_killed_mid_epoch_on_the_gpu_resumes_to_the_same_weights(tmp_path):
    """Dropout and augmentation draw on the GPU: the checkpoint restores its generator."""
    run_script("train_scratch.py", *RUN, "--out", tmp_path / "straight")
    process = start_script("train_scratch.py", *RUN, "--out", tmp_path / "stopped",
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("epoch   1/2"):
            break
    time.sleep(0.2)
    process.terminate()
    process.communicate(timeout=300)
    straight, stopped = (tmp_path / name / "synthetic" / "seed5" for name in ("straight", "stopped"))
    saved = torch.load(stopped / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["partial_epoch"]["step"] > 0, "not stopped mid-epoch"
    run_script("train_scratch.py", *RUN, "--out", tmp_path / "stopped", "--resume")
    assert history(stopped) == history(straight)
    a = torch.load(stopped / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(straight / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[key], b[key]) for key in b)


# --- batched augmentation: the same parameters give the same images on CPU and GPU -----------

def crop(g, b, h, w):
    return augment.crop_params(b, 4, g, CPU), lambda x, p: augment.apply_crop(x, *p, padding=4)


def drawn(params_fn, apply_fn, **options):
    def case(g, b, h, w):
        return params_fn(g, b, h, w), lambda x, p: apply_fn(x, *p, **options)
    return case


AUGMENTATIONS = {
    "crop": crop,
    "flip": drawn(lambda g, b, h, w: (augment.flip_params(b, 0.5, g, CPU),), augment.apply_flip),
    "rotation": drawn(lambda g, b, h, w: (augment.rotation_params(b, g, CPU),),
                      augment.apply_rotation),
    "color_jitter": lambda g, b, h, w: (augment.color_jitter_params(b, g, CPU),
                                        lambda x, p: augment.apply_color_jitter(x, **p)),
    "resized_crop": drawn(lambda g, b, h, w: augment.resized_crop_params(b, h, w, g, CPU),
                          augment.apply_resized_crop, size=32),
    "resize": drawn(lambda g, b, h, w: (), augment.resize, size=24),
    "center_crop": drawn(lambda g, b, h, w: (), augment.center_crop, size=24),
    "cutout": drawn(lambda g, b, h, w: augment.cutout_params(b, h, w, g, CPU), augment.apply_erase),
    "erasing": drawn(lambda g, b, h, w: augment.erasing_params(b, h, w, g, CPU), augment.apply_erase),
    "gaussian_blur": drawn(lambda g, b, h, w: augment.gaussian_blur_params(b, g, CPU),
                           augment.apply_gaussian_blur),
    "salt_pepper": drawn(lambda g, b, h, w: augment.salt_pepper_params(b, h, w, g, CPU),
                         augment.apply_salt_pepper),
    "gaussian_noise": drawn(lambda g, b, h, w: (augment.gaussian_noise_params((b, 3, h, w), g, CPU),),
                            augment.apply_gaussian_noise),
}


def on(device, value):
    if isinstance(value, dict):
        return {key: on(device, item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(on(device, item) for item in value)
    return value.to(device) if isinstance(value, torch.Tensor) else value


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_each_batched_augmentation_on_the_gpu_equals_its_cpu_result(data, name, dtype):
    images = data.images[:64] if dtype == torch.uint8 else data.images[:64] / 255
    params, apply = AUGMENTATIONS[name](torch.Generator().manual_seed(0), 64, 32, 32)
    on_cpu = apply(images, params)
    on_gpu = apply(images.to(GPU), on(GPU, params)).cpu()
    assert on_gpu.dtype == on_cpu.dtype and on_gpu.shape == on_cpu.shape
    difference = (on_gpu.double() - on_cpu.double()).abs()
    if dtype == torch.uint8:  # float kernels may round a level the other way, rarely
        assert difference.max() <= 1 and (difference > 0).double().mean() <= 0.01
    else:
        assert difference.max() <= 1e-4


@pytest.mark.parametrize("name", ["mixup", "cutmix"])
def test_mixing_on_the_gpu_equals_its_cpu_result(data, name):
    images, labels = data.images[:64], data.labels[:64]
    g = torch.Generator().manual_seed(0)
    if name == "mixup":
        params = augment.mixup_params(64, g, CPU)
        apply = augment.apply_mixup
    else:
        params = augment.cutmix_params(64, 32, 32, g, CPU)
        apply = augment.apply_cutmix
    cpu_images, cpu_targets = apply(images, labels, *params, num_classes=10)
    gpu_images, gpu_targets = apply(images.to(GPU), labels.to(GPU), *on(GPU, params), num_classes=10)
    assert (gpu_images.cpu().double() - cpu_images.double()).abs().max() <= 1
    torch.testing.assert_close(gpu_targets.cpu(), cpu_targets)


# --- the loader on the GPU --------------------------------------------------------------------

def batches(loader, epoch):
    loader.set_epoch(epoch)
    return [(images.cpu(), targets.cpu()) for images, targets in loader]


def test_the_loader_repeats_its_order_and_draws_for_a_seed_and_orders_as_on_the_cpu(data):
    stats = stats_of(data.images)

    def loader(device, augment_with):
        return DeviceLoader(data, 64, device, Normalizer(*stats, device), shuffle=True,
                            drop_last=True, augment=augment_with, seed=7)

    first, again = batches(loader(GPU, augment.CropFlip()), 3), batches(loader(GPU, augment.CropFlip()), 3)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not torch.equal(first[0][0], batches(loader(GPU, augment.CropFlip()), 4)[0][0])
    # The order is drawn on the CPU: the same labels in the same order on either device.
    gpu_labels = [targets for _, targets in batches(loader(GPU, None), 3)]
    cpu_labels = [targets for _, targets in batches(loader(CPU, None), 3)]
    assert all(torch.equal(a, b) for a, b in zip(gpu_labels, cpu_labels))


# --- no host synchronisation inside a training step ------------------------------------------

class NoSyncAfterFirstBatch:
    """The loader's batches with CUDA's sync debug mode at "error" from the first step on,
    and back to default before train_one_epoch reads its sums at the end."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self):
        return len(self.loader)

    def batches(self, start_step=0):
        stream = self.loader.batches(start_step)
        first = next(stream)  # the epoch's order comes to the GPU here, once
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield first
            yield from stream
        finally:
            torch.cuda.set_sync_debug_mode("default")


BATCHED_ARMS = [name for name, make in augment.ARMS.items() if not make(10, 32).per_image]


@pytest.mark.parametrize("arm, precision", [(arm, "bf16") for arm in BATCHED_ARMS]
                         + [("standard", "fp16"), ("standard", "fp32")])
def test_training_steps_never_wait_for_the_host(data, arm, precision):
    stats = stats_of(data.images)
    train_augment, eval_augment = augment.arm_transforms(arm, 10)
    pipeline = augment.Compose(*[t for t in (eval_augment, train_augment) if t is not None])
    loader = DeviceLoader(data, 64, GPU, Normalizer(*stats, GPU), shuffle=True, drop_last=True,
                          augment=pipeline, seed=0)
    model = narrow_model().to(GPU, memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters(), 0.05, 5e-4, fused=True)
    scheduler = make_scheduler(optimizer, 2 * len(loader))
    scaler = grad_scaler(GPU, precision)
    torch.backends.cudnn.benchmark = True
    for epoch, watched in enumerate((loader, NoSyncAfterFirstBatch(loader))):  # warm-up, then watched
        loader.set_epoch(epoch)
        train_one_epoch(model, watched, optimizer, scheduler, scaler, device=GPU,
                        precision=precision)
