"""Throughput of engine.augment's batched arms against torchvision applied image by image.

Each batched augmentation arm (engine.augment.ARMS, as the augmentation study uses it) runs
on a whole batch of 32x32 uint8 images; the baseline is the same torchvision.transforms.v2
transform called once per image in a Python loop, which is how a per-image Dataset pipeline
gets per-image parameters. Where torchvision has no such transform the baseline is named in
the table. Warm-up runs are excluded; the time is the fastest of --repeats runs, batched and
per-image runs taking turns.

    python -m benchmarks.augment_throughput [--device cpu] [--batch-size 512] [--repeats 5]
                                            [--threads N] [--clock wall|cpu]
                                            [--json results/augment_throughput.json]
    python -m benchmarks.augment_throughput --ops-only --batch-size 128   # aten ops per arm

The "aten ops" column counts the non-view aten ops one call dispatches (OpCounter), about
the kernels it launches on a GPU: at the study's batch of 128 a GPU step is bound by launches.

"< 10x" marks an op under the old CPU target (retired: what counts now is the share of a GPU
training step, benchmarks/README.md). Measured 2026-12-01 with --threads 1 --clock cpu on the
project's 2-core CPU machine at load average 7 (runs vary by up to 2x), after the CPU-only
tricks left engine/augment.py: crop+flip, resize, centre crop, blur, Cutout, random erasing,
CutMix 10-27x; MixUp 10x; rotation 5x and random resized crop 4x (grid_sample); flip 4x;
Gaussian noise 4x (both sides draw the same normals); colour jitter 2.6x (then hue's ~20 kernels
ran at each of the four steps; now once). With 2 threads and wall time, ms-long ops lose most.
"""
import argparse
import collections
import datetime
import os
import platform
import time
from pathlib import Path


import torch
import torchvision
import torchvision.transforms.v2 as T

from torch.utils._python_dispatch import TorchDispatchMode

from engine import atomic, augment, timing

NUM_CLASSES = 10
IMAGE_SIZE = 32
TARGET_RATIO = 10.0


def per_image(transform):
    """Baseline: a torchvision transform called image by image."""
    return lambda images, labels: [transform(image) for image in images]


def per_pair(transform):
    """Baseline for MixUp/CutMix: torchvision's (batch-level) transform on consecutive pairs,
    so that, as in the batched op, every pair gets its own mixing weight. torchvision's
    MixUp mixes float images only, so each pair is converted first (our arm does the same)."""
    def run(images, labels):
        return [transform(images[start:start + 2].float() / 255, labels[start:start + 2])
                for start in range(0, len(images), 2)]
    return run


def own_op_per_image(arm):
    """Baseline where torchvision has no such transform: our own arm, one image at a time."""
    def run(images, labels):
        generator = torch.Generator(device=images.device).manual_seed(0)
        return [arm(image[None], label[None], generator) for image, label in zip(images, labels)]
    return run


BILINEAR = T.InterpolationMode.BILINEAR
RESIZED = round(0.75 * IMAGE_SIZE)  # the resize / center_crop arms' intermediate size

# arm name -> (torchvision baseline, its description, whether torchvision has the op)
BASELINES = {
    "standard": (per_image(T.Compose([T.RandomCrop(IMAGE_SIZE, padding=4),
                                      T.RandomHorizontalFlip()])),
                 "RandomCrop(32, padding=4) + RandomHorizontalFlip", True),
    "rotation": (per_image(T.RandomRotation(15, interpolation=BILINEAR)),
                 "RandomRotation(15, bilinear)", True),
    "flip": (per_image(T.RandomHorizontalFlip()), "RandomHorizontalFlip()", True),
    "color_jitter": (per_image(T.ColorJitter(0.4, 0.4, 0.4, 0.1)),
                     "ColorJitter(0.4, 0.4, 0.4, 0.1)", True),
    "random_resized_crop": (per_image(T.RandomResizedCrop(IMAGE_SIZE, scale=(0.35, 1.0))),
                            "RandomResizedCrop(32, scale=(0.35, 1))", True),
    "resize": (per_image(T.Compose([T.Resize(RESIZED), T.Resize(IMAGE_SIZE)])),
               "Resize(24) + Resize(32)", True),
    "center_crop": (per_image(T.Compose([T.CenterCrop(RESIZED), T.Resize(IMAGE_SIZE)])),
                    "CenterCrop(24) + Resize(32)", True),
    "cutout": (per_image(T.RandomErasing(p=1.0, scale=(0.25, 0.25), ratio=(1.0, 1.0))),
               "RandomErasing(p=1, 16x16 box; the closest torchvision op)", True),
    "gaussian_blur": (per_image(T.RandomApply([T.GaussianBlur(3, sigma=(0.1, 2.0))], p=0.5)),
                      "RandomApply([GaussianBlur(3, (0.1, 2))], p=0.5)", True),
    "salt_pepper": (None, "no torchvision op: our arm on one image at a time", False),
    "gaussian_noise": (per_image(T.GaussianNoise(sigma=0.1)), "GaussianNoise(sigma=0.1)", True),
    "random_erasing": (per_image(T.RandomErasing()), "RandomErasing()", True),
    "mixup": (per_pair(T.MixUp(num_classes=NUM_CLASSES)),
              "MixUp on pairs (one weight per pair)", False),
    "cutmix": (per_pair(T.CutMix(num_classes=NUM_CLASSES)),
               "CutMix on pairs (one box per pair)", False),
}


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def seconds_per_call(runs, repeats, device, clock=time.perf_counter):
    """Fastest time by `clock` of each of `runs` over `repeats` calls, after one warm-up each.

    The runs take turns, so that a machine shared with other jobs slows them alike, and the
    fastest run is the one least disturbed by them (as timeit recommends).
    """
    times = [[] for _ in runs]
    for repeat in range(repeats + 1):
        for run, run_times in zip(runs, times):
            seconds = timing.seconds(run, device, clock)
            if repeat > 0:  # the first round is the warm-up
                run_times.append(seconds)
    return [min(run_times) for run_times in times]


class OpCounter(TorchDispatchMode):
    """Counts the aten ops a call dispatches, views left out: on a GPU each is about one
    kernel launch, which bounds a small batch's time more than its arithmetic does."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


def aten_ops(arm, images, labels, generator):
    """{op name: calls} for one call of a pipeline on a batch."""
    with OpCounter() as counter:
        arm(images, labels, generator)
    return dict(counter.ops)


def arm_ops(name, images, labels):
    """Aten ops of one call of the study's arm `name` on the batch."""
    arm = augment.ARMS[name](NUM_CLASSES, IMAGE_SIZE)
    return sum(aten_ops(arm, images, labels, torch.Generator(images.device)).values())


def measure(name, images, labels, repeats, clock):
    device = images.device
    arm = augment.ARMS[name](NUM_CLASSES, IMAGE_SIZE)
    baseline, description, torchvision_has_it = BASELINES[name]
    baseline = baseline or own_op_per_image(arm)
    generator = torch.Generator(device=device).manual_seed(0)
    batched, looped = seconds_per_call([lambda: arm(images, labels, generator),
                                        lambda: baseline(images, labels)], repeats, device, clock)
    count = len(images)
    return {
        "operation": name,
        "batched_images_per_second": count / batched,
        "per_image_images_per_second": count / looped,
        "ratio": looped / batched,
        "baseline": description,
        "torchvision_has_op": torchvision_has_it,
    }


def print_table(entries):
    header = (f"{'operation':<20} {'batched img/s':>14} {'per-image img/s':>16} {'ratio':>8}"
              f" {'aten ops':>8}  baseline")
    print(header)
    print("-" * len(header))
    for entry in entries:
        below_target = entry["torchvision_has_op"] and entry["ratio"] < TARGET_RATIO
        short = "  < 10x" if below_target else ""
        print(f"{entry['operation']:<20} {entry['batched_images_per_second']:>14,.0f} "
              f"{entry['per_image_images_per_second']:>16,.0f} {entry['ratio']:>7.1f}x "
              f"{entry['aten_ops']:>8}  "
              f"{entry['baseline']}{short}")


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=512,
                        help="images per batch (default 512)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed runs per measurement (default 5)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    parser.add_argument("--threads", type=int,
                        help="torch intra-op CPU threads (default: torch's own choice); on a "
                             "machine shared with other jobs, 1 avoids waiting on a busy core")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall: elapsed time (default); cpu: this process's CPU time, "
                             "steadier on a busy machine (with --threads 1 on a CPU device)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--ops-only", action="store_true",
                        help="only count each arm's aten ops per batch (about its GPU kernels)")
    return parser


def main(args):
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    data_generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch_size, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8,
                           generator=data_generator).to(device)
    labels = torch.randint(0, NUM_CLASSES, (args.batch_size,), generator=data_generator).to(device)
    if args.ops_only:
        for name in BASELINES:
            print(f"{name:<20} {arm_ops(name, images, labels):>5}")
        return
    clock = CLOCKS[args.clock]
    entries = [{**measure(name, images, labels, args.repeats, clock),
                "aten_ops": arm_ops(name, images, labels)} for name in BASELINES]
    print(f"batch {args.batch_size} of {IMAGE_SIZE}x{IMAGE_SIZE} uint8 on {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock, "
          f"best of {args.repeats}")
    print_table(entries)
    if args.json:
        report = {
            "device": str(device),
            "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                            else platform.processor() or platform.machine()),
            "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__),
            "threads": torch.get_num_threads(),
            "clock": args.clock,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "operations": entries,
        }
        atomic.write_json(args.json, report)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
