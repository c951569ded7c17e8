"""Does train_scratch.py learn a real image-folder dataset it has never seen as well as a
plain reference trainer, given the same epochs, batch size, model and learning rate?

The dataset is real: scikit-learn's handwritten digits (1,797 8x8 grayscale scans, 10
classes; `pip install scikit-learn`, it ships with the package), written as PNG files into an
ImageFolder tree (80% train / 20% test, stratified, seeded). Both trainers see exactly the
training images and are scored on the same test images:
  ours       python train_scratch.py --dataset folder --data-dir TREE --val-size 0 ...
  reference  torchvision ImageFolder + per-image Resize, RandomCrop(pad 4), RandomHorizontalFlip,
             ToTensor, Normalize (the training split's statistics, as ours),
             a DataLoader, the same hand-written ResNet-18, SGD (momentum 0.9, weight decay
             5e-4, the same peak lr) with a plain per-epoch cosine schedule, fp32.
Both use the standard crop + flip (flipped digits stay consistent within a class).

    python -m benchmarks.folder_vs_reference --epochs 15 --width 16 --batch-size 64
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.v2 as T
from PIL import Image

from models.resnet import resnet18


def write_digits_tree(root, seed=0, test_fraction=0.2):
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


def run_ours(tree, args, out):
    command = [sys.executable, str(REPO / "train_scratch.py"), "--dataset", "folder",
               "--data-dir", str(tree), "--val-size", "0", "--epochs", str(args.epochs),
               "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--width", str(args.width),
               "--label-smoothing", "0", "--seed", str(args.seed), "--device", args.device,
               "--no-progress", "--out", str(out)]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    metrics = json.loads((out / "metrics.json").read_text())
    return {"test_accuracy": metrics["test_accuracy"], "train_accuracy": metrics["train_accuracy"],
            "seconds": seconds, "command": " ".join(command)}


def reference_transforms(mean, std, train):
    steps = [T.Grayscale(num_output_channels=3), T.Resize(32), T.CenterCrop(32)]
    if train:
        steps += [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
    return T.Compose(steps + [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)])


def run_reference(tree, args, mean, std):
    torch.manual_seed(args.seed)
    device = torch.device("cpu" if args.device in ("auto", "cpu") and not torch.cuda.is_available()
                          else ("cuda" if args.device == "auto" else args.device))
    train_set = torchvision.datasets.ImageFolder(tree / "train", reference_transforms(mean, std, True))
    test_set = torchvision.datasets.ImageFolder(tree / "test", reference_transforms(mean, std, False))
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                                               num_workers=args.workers, drop_last=True)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=256, num_workers=args.workers)
    model = resnet18(num_classes=10, width=args.width).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    started = time.perf_counter()
    for _ in range(args.epochs):
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        tree = write_digits_tree(Path(scratch) / "digits", seed=args.seed)
        ours = run_ours(tree, args, Path(scratch) / "run")
        config = json.loads((Path(scratch) / "run" / "config.json").read_text())
        mean, std = config["normalization"]["mean"], config["normalization"]["std"]
        reference = run_reference(tree, args, mean, std)
    result = {"dataset": "sklearn digits as an ImageFolder tree (1437 train / 360 test)",
              "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
              "width": args.width, "ours": ours, "reference": reference,
              "torch": str(torch.__version__), "date": time.strftime("%Y-%m-%d")}
    print(f"test accuracy  ours {ours['test_accuracy']:.4f} ({ours['seconds']:.0f} s)   "
          f"reference {reference['test_accuracy']:.4f} ({reference['seconds']:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
