"""Training throughput on one device: the project's fast path (engine.loop.train_one_epoch on a
DeviceLoader: uint8 data on the device, batched crop + flip, channels_last, automatic
precision, fused SGD, one-cycle) against a plain CIFAR loop (a per-image PIL Dataset,
torchvision transforms in DataLoader workers, fp32, loss.item() every step), same network,
batch, initial weights and synthetic CIFAR-shaped data, taking turns in one process.
benchmarks/README.md says what each path does, how the turns run, and the measured tables.

    python -m benchmarks.train_throughput          # the GPU if any; ResNet-18, batch 512
    python -m benchmarks.train_throughput --device cpu --width 16 --batch-size 128 --steps 10
    python -m benchmarks.train_throughput --device cpu --batch-size 128 --steps 8 --turns steps
    python -m benchmarks.train_throughput --model torchvision_resnet18 --image-size 224 --compile
"""
import copy
import datetime
import functools
import gc
import itertools
import platform
import resource
import shlex
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path


import torch
import torch.nn as nn
import torchvision
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from engine.atomic import write_json
from engine.augment import CropFlip
from engine.cli import Parser, nonnegative_int, positive_int
from engine.configurations import RECIPES
from engine.device import grad_scaler, resolve_device, resolve_precision
from engine.errors import exits_cleanly_on_user_error
from engine.timing import seconds as timed
from engine.loader import DeviceLoader, Normalizer, channel_stats
from engine.loop import (make_optimizer, make_scheduler, soft_or_hard_loss,
                         train_one_epoch)
from engine.pretrained import model_from_spec
from engine.sources import make_synthetic

MODELS = ("resnet18_cifar", "torchvision_resnet18")
EPOCH_IMAGES = 50_000      # CIFAR-10's training set: the epoch the times are extrapolated to
NUM_CLASSES = 10
MOMENTUM = 0.9             # the baseline's SGD momentum (kuangliu/pytorch-cifar)
CUDA_PEAK = "torch.cuda.max_memory_allocated (tensors on the GPU, reset before each run)"
CPU_PEAK = ("resource.getrusage ru_maxrss of this process (high-water mark reset before each "
            "run through /proc/self/clear_refs; DataLoader workers not included)")


# --- the data and the model both paths share ---------------------------------------------

def make_data(size):
    """Synthetic CIFAR-shaped training images (uint8, (N, 3, 32, 32)) and labels."""
    train, _ = make_synthetic(train_size=size, test_size=10, num_classes=NUM_CLASSES)
    return train


def make_model(args):
    """The network both paths train, on the CPU; each path takes its own copy of it."""
    spec = {"name": args.model, "num_classes": NUM_CLASSES}
    if args.model == "resnet18_cifar":
        spec["width"] = args.width
    torch.manual_seed(0)
    return model_from_spec(spec)


def flops_per_image(model, batch_size, image_size):
    """FLOPs of one forward + backward of one batch, divided by the batch size.

    Counted on a copy of the model on the meta device (shapes only, no arithmetic), so even
    a full-width batch of 512 costs nothing to count.
    """
    meta_model = copy.deepcopy(model).to("meta").train()
    inputs = torch.empty(batch_size, 3, image_size, image_size, device="meta")
    targets = torch.zeros(batch_size, dtype=torch.int64, device="meta")
    with FlopCounterMode(display=False) as counter:
        soft_or_hard_loss(meta_model(inputs), targets, 0.0).backward()
    return counter.get_total_flops() / batch_size


# --- endless batch streams, cut into the warm-up and the timed part ----------------------

def endless(loader):
    """The loader's batches epoch after epoch (a DeviceLoader gets its set_epoch call)."""
    for epoch in itertools.count():
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader


class Take:
    """The next `count` batches of a stream, as a loader train_one_epoch can iterate."""

    def __init__(self, stream, count):
        self.stream = stream
        self.count = count

    def __len__(self):
        return self.count

    def __iter__(self):
        return self.batches()

    def batches(self, start_step=0):
        """As DeviceLoader.batches, which train_one_epoch iterates (skipped batches are drawn)."""
        return itertools.islice(self.stream, start_step, self.count)


# --- the project's path: engine pieces only ---------------------------------------------

def project_path(args, device, data, stats, model):
    """A function that trains `steps` steps the way train_scratch.py does."""
    precision = resolve_precision("auto", device)
    resize_to = None if args.image_size == data.images.shape[-1] else args.image_size
    normalize = Normalizer(*stats, device, image_size=resize_to, channels_last=True)
    loader = DeviceLoader(data, args.batch_size, device, normalize, shuffle=True,
                          drop_last=True, augment=CropFlip(), seed=0)
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters(), RECIPES["scratch"]["lr"], RECIPES["scratch"]["weight_decay"],
                               fused=device.type == "cuda")
    # One schedule over exactly the steps taken: OneCycleLR refuses to step past its end.
    scheduler = make_scheduler(optimizer, args.warmup + args.steps)
    scaler = grad_scaler(device, precision)
    trained = torch.compile(model) if args.compile else model
    stream = endless(loader)

    def train(steps):
        train_one_epoch(trained, Take(stream, steps), optimizer, scheduler, scaler,
                        device=device, precision=precision,
                        label_smoothing=RECIPES["scratch"]["label_smoothing"])

    return train, precision


# --- the plain baseline: what most CIFAR training scripts do ------------------------------

class PlainCifarDataset(Dataset):
    """As torchvision.datasets.CIFAR10: HWC uint8 arrays, one PIL image per __getitem__."""

    def __init__(self, images_hwc, labels, transform):
        self.images = images_hwc
        self.labels = labels
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def plain_transform(stats, stored_size, image_size):
    """The usual per-image CIFAR training transform; a Resize when the model wants a larger
    input, after the crop and flip as the project's Normalizer resizes after CropFlip."""
    steps = [T.RandomCrop(stored_size, padding=4), T.RandomHorizontalFlip()]
    if image_size != stored_size:
        steps.append(T.Resize(image_size))
    return T.Compose(steps + [T.ToTensor(), T.Normalize(*stats)])


def baseline_path(args, device, data, stats, model):
    """A function that trains `steps` steps the plain way."""
    images_hwc = data.images.permute(0, 2, 3, 1).contiguous().numpy()
    transform = plain_transform(stats, data.images.shape[-1], args.image_size)
    dataset = PlainCifarDataset(images_hwc, data.labels.numpy(), transform)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        num_workers=args.workers, persistent_workers=args.workers > 0)
    model = model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=RECIPES["scratch"]["lr"], momentum=MOMENTUM,
                                weight_decay=RECIPES["scratch"]["weight_decay"])
    criterion = nn.CrossEntropyLoss()
    stream = endless(loader)

    def train(steps):
        model.train()
        running_loss = 0.0
        for images, labels in itertools.islice(stream, steps):
            images, labels = images.to(device), labels.to(device)
            loss = criterion(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running_loss += loss.item()  # the usual per-step read: a host sync every step
        return running_loss

    return train, "fp32"


# --- timing and memory --------------------------------------------------------------------

def reset_peak_memory(device):
    """Start a run's peak-memory measurement (see CUDA_PEAK and CPU_PEAK); False where the
    CPU high-water mark cannot be reset (no /proc), so no peak would be the run's own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        # Writing 5 resets the kernel's high-water mark of resident memory, which is what
        # ru_maxrss reports; without it the second path would inherit the first one's peak.
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_memory_bytes(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    kib_or_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib_or_bytes if sys.platform == "darwin" else kib_or_bytes * 1024  # Linux: KiB


PATHS = {"project": project_path, "baseline": baseline_path}


@dataclass
class Turn:
    """One timed turn of one path."""
    seconds: float               # CUDA synchronised at both ends
    images: int
    precision: str
    peak_memory_bytes: int | None = None  # None where it is not the path's own


def in_turns(number):
    """The paths' order in turn `number`: swapped every turn, so neither always goes first
    (and alone pays the process's first-use costs: oneDNN kernels, the allocator growing)."""
    names = list(PATHS)
    return names if number % 2 == 0 else names[::-1]


def measure_by_runs(args, device, data, stats, template):
    """--repeats runs per path, taking turns; each run builds its path afresh from the
    template, warms it up, times --steps steps and frees it, so only one path holds memory
    at a time and each peak is its own."""
    turns = {name: [] for name in PATHS}
    for number in range(args.repeats):
        for name in in_turns(number):
            own_peak = reset_peak_memory(device)
            train, precision = PATHS[name](args, device, data, stats, copy.deepcopy(template))
            train(args.warmup)
            seconds = timed(functools.partial(train, args.steps), device)
            peak = peak_memory_bytes(device) if own_peak else None
            turns[name].append(Turn(seconds, args.steps * args.batch_size, precision, peak))
            del train  # frees the path's model, optimizer and loader (and stops its workers)
    return turns


def measure_by_steps(args, device, data, stats, template):
    """Both paths built and warmed up once, then --steps timed steps each, one step per turn.

    On a machine whose load swings within a minute this compares like with like, but it
    favours the baseline: its workers prepare batches during the project's steps. Both paths
    are alive throughout, so no peak memory is the path's own.
    """
    paths = {name: make(args, device, data, stats, copy.deepcopy(template))
             for name, make in PATHS.items()}
    for train, _ in paths.values():
        train(args.warmup)
    turns = {name: [] for name in PATHS}
    for number in range(args.steps):
        for name in in_turns(number):
            train, precision = paths[name]
            turns[name].append(Turn(timed(functools.partial(train, 1), device), args.batch_size, precision))
    return turns


def summarise(name, turns, flops):
    """A path's figures, at its median turn's rate (a shared machine slows some turns)."""
    rates = [turn.images / turn.seconds for turn in turns]
    images_per_second = statistics.median(rates)
    peaks = [turn.peak_memory_bytes for turn in turns]
    return {
        "path": name,
        "precision": turns[0].precision,
        "images_per_second": images_per_second,
        "images_per_second_turns": rates,
        "epoch_seconds": EPOCH_IMAGES / images_per_second,
        "tflops": flops * images_per_second / 1e12,
        "peak_memory_bytes": None if None in peaks else max(peaks),
    }


# --- report -------------------------------------------------------------------------------

def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {torch.get_num_threads()} torch threads"


def describe_turns(report):
    if report["turns"] == "steps":
        return f"{report['steps']} timed steps per path in turns of one step"
    return (f"{report['repeats']} runs per path in turns, each {report['steps']} timed steps "
            f"after {report['warmup']} warm-up")


def print_report(report):
    print(f"{report['model']} (width {report['width']}) at {report['image_size']}px, batch "
          f"{report['batch_size']}, {describe_turns(report)}; {report['dataset_size']:,} images")
    print(f"device {report['device']} ({report['device_name']}), torch {report['torch']}, "
          f"{report['date']}")
    print(f"FLOPs per image (forward + backward): {report['flops_per_image'] / 1e9:.3f} GFLOP")
    header = (f"{'path':<9} {'precision':>9} {'img/s':>10} {'epoch s':>9} {'TFLOP/s':>8} "
              f"{'peak MiB':>9}  img/s per turn (median taken)")
    print(header)
    print("-" * len(header))
    for entry in (report["project"], report["baseline"]):
        peak = entry["peak_memory_bytes"]
        turns = ", ".join(f"{rate:,.1f}" for rate in entry["images_per_second_turns"])
        print(f"{entry['path']:<9} {entry['precision']:>9} {entry['images_per_second']:>10,.1f} "
              f"{entry['epoch_seconds']:>9,.1f} {entry['tflops']:>8.3f} "
              f"{'-' if peak is None else f'{peak / 2**20:,.0f}':>9}  {turns}")
    print(f"ratio project / baseline: {report['ratio']:.2f}x")
    print(f"peak memory: {report['peak_memory_measure']}")
    print(f"command: {report['command']}")


def peak_memory_note(args, device, reset_works):
    if args.turns == "steps":
        return "not measured: with --turns steps both paths hold memory at once"
    if device.type == "cuda":
        return CUDA_PEAK
    if not reset_works:
        return "not measured: this system cannot reset the CPU high-water mark"
    return CPU_PEAK


def get_args_parser():
    parser = Parser(__doc__)
    parser.add_argument("--model", choices=MODELS, default="resnet18_cifar",
                        help="the hand-written CIFAR ResNet-18 (default) or torchvision's")
    parser.add_argument("--width", type=positive_int, default=64,
                        help="first-stage channels of resnet18_cifar (64 is ResNet-18)")
    parser.add_argument("--image-size", type=positive_int, default=32,
                        help="the model's input side; above 32 each batch is upsampled")
    parser.add_argument("--batch-size", type=positive_int, default=512)
    parser.add_argument("--steps", type=positive_int, default=50, help="timed steps per path")
    parser.add_argument("--warmup", type=nonnegative_int, default=5,
                        help="untimed steps per path before the timed ones")
    parser.add_argument("--turns", choices=("runs", "steps"), default="runs",
                        help="runs: each path built, warmed up, timed and freed --repeats times, "
                             "the paths taking turns (default); steps: both built once and "
                             "stepped alternately, for a machine whose load swings (favours "
                             "the baseline, no memory figures)")
    parser.add_argument("--repeats", type=positive_int, default=None,
                        help="runs per path with --turns runs (default 3); the median is reported")
    parser.add_argument("--workers", type=nonnegative_int, default=2,
                        help="the baseline's DataLoader worker processes (persistent)")
    parser.add_argument("--dataset-size", type=positive_int, default=EPOCH_IMAGES,
                        help="synthetic training images (smaller only to test the script)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--threads", type=positive_int,
                        help="torch intra-op CPU threads of this process (default: torch's)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the project path's model (the baseline never is)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return parser


def check_args(parser, args):
    if args.turns == "steps" and args.repeats is not None:
        parser.error("--repeats counts runs of --turns runs: with --turns steps every timed "
                     "step is a turn, so set --steps instead")
    if args.repeats is None:
        args.repeats = 3 if args.turns == "runs" else 1
    if args.model == "torchvision_resnet18" and args.width != 64:
        parser.error("--width applies to resnet18_cifar only: drop it for torchvision_resnet18")
    if args.batch_size > args.dataset_size:
        parser.error(f"--batch-size {args.batch_size} is larger than --dataset-size "
                     f"{args.dataset_size}: no full batch to time")


@exits_cleanly_on_user_error
def main(args):
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    data = make_data(args.dataset_size)
    stats = channel_stats(data.images)
    template = make_model(args)
    flops = flops_per_image(template, args.batch_size, args.image_size)
    measure = measure_by_steps if args.turns == "steps" else measure_by_runs
    turns = measure(args, device, data, stats, template)
    project, baseline = (summarise(name, turns[name], flops) for name in ("project", "baseline"))
    report = {
        "benchmark": "train_throughput",
        "command": "python -m benchmarks.train_throughput " + shlex.join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": device_name(device),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "threads": torch.get_num_threads(),
        "model": args.model,
        "width": args.width,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "turns": args.turns,
        "repeats": args.repeats,
        "workers": args.workers,
        "compile": args.compile,
        "dataset_size": args.dataset_size,
        "flops_per_image": flops,
        "flops_counted": ("FlopCounterMode over one forward + backward of one batch, divided by "
                          "the batch size (convolutions and matrix products only)"),
        "peak_memory_measure": peak_memory_note(args, device,
                                                project["peak_memory_bytes"] is not None),
        "project": project,
        "baseline": baseline,
        "ratio": project["images_per_second"] / baseline["images_per_second"],
        "ratio_turns": [mine / theirs for mine, theirs in zip(project["images_per_second_turns"],
                                                              baseline["images_per_second_turns"])],
    }
    print_report(report)
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    parser = get_args_parser()
    arguments = parser.parse_args()
    check_args(parser, arguments)
    main(arguments)
