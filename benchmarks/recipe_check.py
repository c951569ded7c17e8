"""Do the project's defaults learn real images at any batch size and epoch budget, as well as
a plain trainer whose peak lr is tuned for each?

A user's first changes are --batch-size and --epochs; the defaults (no --lr: the recipe's
peak scaled to the batch, engine.cli.resolve_lr) must still learn. The data is real:
scikit-learn's handwritten digits (1,797 8x8 grayscale scans, 10 classes, shipped with the
package) written as PNG files into an ImageFolder tree (80% train / 20% test, stratified,
seeded). For each batch size B and epoch budget E, both trainers see the same images:
  ours   python train_scratch.py --dataset folder --data-dir TREE --val-size 0 --epochs E
         --batch-size B --width W   (no --lr; every other setting the recipe's)
  plain  torchvision ImageFolder + per-image Resize, RandomCrop(pad 4), RandomHorizontalFlip,
         Normalize (the training split's statistics, as ours) in a DataLoader, the same
         ResNet-18, SGD (momentum 0.9, weight decay 5e-4) with a per-epoch cosine, fp32,
         once per peak lr of --lr-grid; the best is "the tuned plain trainer" (picked on the
         test set: that favours it, not us).

    python -m benchmarks.recipe_check --width 16 --json results/benchmarks/recipe_check.json
    python -m benchmarks.recipe_check --device cuda --width 64     # ResNet-18 on a GPU
    python -m benchmarks.recipe_check --quick                      # one cell, for the tests
"""
import argparse
import datetime
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.v2 as T
from PIL import Image

from engine.atomic import write_json
from models.resnet import resnet18

REPO = Path(__file__).resolve().parent.parent
BATCH_SIZES = (32, 64, 128, 256, 512)
EPOCHS = (5, 15)
LR_GRID = (0.01, 0.02, 0.05, 0.1, 0.2)
QUICK = dict(batch_sizes=[128], epochs=[1], lr_grid=[0.05], width=8)


def write_digits_tree(root, seed=0, test_fraction=0.2):
    """scikit-learn's digits as root/{train,test}/<digit>/<index>.png, split per class."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    generator = np.random.default_rng(seed)
    for label in range(10):
        members = np.flatnonzero(digits.target == label)
        generator.shuffle(members)
        cut = int(round(len(members) * test_fraction))
        for split, chosen in (("test", members[:cut]), ("train", members[cut:])):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for index in chosen:
                pixels = (digits.images[index] * (255 / 16)).round().astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / f"{index}.png")
    return root


def train_ours(tree, batch_size, epochs, args, out):
    """train_scratch.py with its defaults (no --lr) in a subprocess, as a user runs it."""
    flags = ["--dataset", "folder", "--data-dir", str(tree), "--val-size", "0",
             "--epochs", str(epochs), "--batch-size", str(batch_size), "--width", str(args.width),
             "--seed", str(args.seed), "--device", args.device, "--no-progress", "--out", str(out)]
    started = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "train_scratch.py"), *flags], check=True,
                   stdout=subprocess.DEVNULL)
    run = out / "folder" / f"seed{args.seed}"
    metrics = json.loads((run / "metrics.json").read_text())
    config = json.loads((run / "config.json").read_text())
    return {"test_accuracy": metrics["test_accuracy"], "train_accuracy": metrics["train_accuracy"],
            "lr": config["args"]["lr"], "seconds": time.perf_counter() - started,
            "normalization": config["normalization"],
            "command": shlex.join(["python", "train_scratch.py", *flags])}


def plain_transforms(mean, std, train):
    steps = [T.Grayscale(num_output_channels=3), T.Resize(32), T.CenterCrop(32)]
    if train:
        steps += [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
    return T.Compose(steps + [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)])


def run_plain(tree, batch_size, epochs, lr, args, mean, std):
    """The plain trainer, written the way most code does it; its test accuracy."""
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    train_set = torchvision.datasets.ImageFolder(tree / "train", plain_transforms(mean, std, True))
    test_set = torchvision.datasets.ImageFolder(tree / "test", plain_transforms(mean, std, False))
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True,
                                               num_workers=args.workers, drop_last=True)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=256, num_workers=args.workers)
    model = resnet18(num_classes=10, width=args.width).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for images, labels in train_loader:
            loss = F.cross_entropy(model(images.to(device)), labels.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in test_loader:
            correct += (model(images.to(device)).argmax(1).cpu() == labels).sum().item()
    return {"test_accuracy": correct / len(test_set), "seconds": time.perf_counter() - started}


def train_plain(tree, batch_size, epochs, lr, args, normalization):
    """run_plain at one peak lr, or its result from an earlier run in --plain-cache (the
    plain trainer does not change when the recipe does)."""
    key = f"b{batch_size}_e{epochs}_lr{lr:g}_w{args.width}_s{args.seed}_{args.device}"
    cached = args.plain_cache / f"{key}.json" if args.plain_cache else None
    if cached is not None and cached.is_file():
        return {**json.loads(cached.read_text()), "cached": str(cached)}
    result = run_plain(tree, batch_size, epochs, lr, args, normalization["mean"],
                       normalization["std"])
    result["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if cached is not None:
        write_json(cached, result)
    return result


def check_cell(tree, batch_size, epochs, args, scratch):
    """One batch size and budget: ours, then the plain trainer over the lr grid."""
    ours = train_ours(tree, batch_size, epochs, args, scratch / f"ours_b{batch_size}_e{epochs}")
    normalization = ours.pop("normalization")
    grid = {lr: train_plain(tree, batch_size, epochs, lr, args, normalization) for lr in args.lr_grid}
    best_lr = max(grid, key=lambda lr: grid[lr]["test_accuracy"])
    best = grid[best_lr]["test_accuracy"]
    return {"batch_size": batch_size, "epochs": epochs,
            "steps": epochs * (args.train_images // batch_size), "ours": ours,
            "plain": {str(lr): grid[lr] for lr in args.lr_grid},
            "plain_best_lr": best_lr, "plain_best_accuracy": best,
            "ours_minus_plain_best": ours["test_accuracy"] - best}


def cell_line(cell):
    grid = "  ".join(f"{lr}: {run['test_accuracy']:.3f}" for lr, run in cell["plain"].items())
    return (f"batch {cell['batch_size']:>3}  epochs {cell['epochs']:>2}  steps {cell['steps']:>4}  "
            f"ours {cell['ours']['test_accuracy']:.4f} (lr {cell['ours']['lr']:.4g})  "
            f"plain best {cell['plain_best_accuracy']:.4f} (lr {cell['plain_best_lr']})  "
            f"difference {100 * cell['ours_minus_plain_best']:+.2f} pt   [plain {grid}]")


def markdown_table(cells):
    """The benchmarks/README.md table: one row per batch size and budget."""
    lrs = list(cells[0]["plain"])
    lines = ["| batch | epochs | steps | ours: lr | ours: test acc | " +
             " | ".join(f"plain lr {lr}" for lr in lrs) + " | plain best | ours − best |",
             "|---" * (7 + len(lrs)) + "|"]
    for cell in cells:
        grid = " | ".join(f"{100 * cell['plain'][lr]['test_accuracy']:.2f}" for lr in lrs)
        lines.append(f"| {cell['batch_size']} | {cell['epochs']} | {cell['steps']} | "
                     f"{cell['ours']['lr']:.4g} | {100 * cell['ours']['test_accuracy']:.2f} | "
                     f"{grid} | {100 * cell['plain_best_accuracy']:.2f} | "
                     f"{100 * cell['ours_minus_plain_best']:+.2f} |")
    return "\n".join(lines)


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--epochs", type=int, nargs="+", default=list(EPOCHS),
                        help="epoch budgets")
    parser.add_argument("--lr-grid", type=float, nargs="+", default=list(LR_GRID),
                        help="the plain trainer's peak learning rates")
    parser.add_argument("--width", type=int, default=16,
                        help="first-stage channels of the ResNet-18 (64: the full network)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (both trainers)")
    parser.add_argument("--workers", type=int, default=2, help="the plain trainer's DataLoader workers")
    parser.add_argument("--threads", type=int, default=None, help="torch's CPU threads")
    parser.add_argument("--quick", action="store_true",
                        help="one small cell (batch 128, 1 epoch, lr 0.05, width 8): for the tests")
    parser.add_argument("--plain-cache", type=Path, default=None,
                        help="a folder keeping each plain-trainer result (one JSON file per "
                             "batch, budget and lr): found there, it is reused, not rerun")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    return parser


def main(args):
    if args.quick:
        vars(args).update(QUICK)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = datetime.datetime.now(datetime.timezone.utc)
    cells = []
    with tempfile.TemporaryDirectory() as scratch:
        tree = write_digits_tree(Path(scratch) / "digits", seed=args.seed)
        args.train_images, test_images = (sum(1 for _ in (tree / split).rglob("*.png"))
                                           for split in ("train", "test"))
        for epochs in args.epochs:
            for batch_size in args.batch_sizes:
                cells.append(check_cell(tree, batch_size, epochs, args, Path(scratch)))
                print(cell_line(cells[-1]), flush=True)
    print(markdown_table(cells))
    report = {"dataset": f"sklearn digits as an ImageFolder tree ({args.train_images} train / "
                         f"{test_images} test images)",
              "width": args.width, "device": args.device, "threads": torch.get_num_threads(),
              "seed": args.seed, "lr_grid": args.lr_grid, "cells": cells,
              "torch": str(torch.__version__), "started": started.isoformat(timespec="seconds"),
              "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": shlex.join(["python", "-m", "benchmarks.recipe_check", *sys.argv[1:]])}
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
