"""Data sources: a dataset as (train, test) ImageData of uint8 images (N, 3, H, W), int64
labels and class names, small enough to live on the training device (CIFAR-10: 150 MB);
and the seeded, class-balanced validation split and training subset.

  cifar10, cifar100  torchvision's datasets: its download, cache and MD5 checks (before
                     anything is unpickled)
  folder             ROOT/train/<class>/* and ROOT/test/<class>/* (or val/), resized once
  synthetic          generated: learnable, for tests and offline smoke runs
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.v2.functional as TF
from PIL import Image, UnidentifiedImageError

from engine.errors import UserError

SOURCES = ("cifar10", "cifar100", "folder", "synthetic")
IMAGE_EXTENSIONS = torchvision.datasets.folder.IMG_EXTENSIONS


@dataclass
class ImageData:
    images: torch.Tensor  # (N, 3, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    classes: list

    def __len__(self):
        return len(self.labels)

    def select(self, indices):
        return ImageData(self.images[indices], self.labels[indices], self.classes)


def load_source(name, data_dir, *, image_size=32):
    """Return (train, test) ImageData for the named source."""
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, Path(data_dir))
    if name == "folder":
        return load_image_folder(Path(data_dir), image_size)
    if name == "synthetic":
        return make_synthetic(image_size=image_size)
    raise UserError(f"unknown dataset {name!r}: choose one of {', '.join(SOURCES)}")


# --- CIFAR ----------------------------------------------------------------------------

_CIFAR = {
    "cifar10": (torchvision.datasets.CIFAR10, "CIFAR-10"),
    "cifar100": (torchvision.datasets.CIFAR100, "CIFAR-100"),
}


def load_cifar(name, root):
    dataset_class, title = _CIFAR[name]
    try:
        # download=True first verifies what is there (MD5 of every batch file) and only
        # fetches or re-extracts the archive when that fails.
        train = dataset_class(root, train=True, download=True)
        test = dataset_class(root, train=False, download=False)
    except Exception as error:  # torchvision raises URLError, OSError or RuntimeError
        raise UserError(_cifar_unavailable_message(dataset_class, title, root, error)) from None
    return _cifar_to_tensors(train), _cifar_to_tensors(test)


def _cifar_unavailable_message(dataset_class, title, root, error):
    folder = root / dataset_class.base_folder
    archive = root / dataset_class.filename
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if folder.exists() or archive.exists():
        problem = (f"{title} files in {root} fail their MD5 checksums and a fresh copy could not be "
                   f"downloaded ({reason})")
    else:
        problem = f"{title} is not in {root} and could not be downloaded ({reason})"
    return (f"{problem}: put {dataset_class.filename} at {archive} or the extracted "
            f"{dataset_class.base_folder}/ at {folder}/ (or pass --data-dir), or use "
            f"--dataset folder for your own images or --dataset synthetic to run offline")


def _cifar_to_tensors(dataset):
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor(dataset.targets, dtype=torch.int64)
    return ImageData(images, labels, list(dataset.classes))


# --- ImageFolder trees ------------------------------------------------------------------

def load_image_folder(root, image_size):
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise UserError(f"no train/ split in {root}: the folder dataset needs "
                        f"{root}/train/<class>/* and {root}/test/<class>/* (or val/)")
    test_dir = next((root / name for name in ("test", "val") if (root / name).is_dir()), None)
    if test_dir is None:
        raise UserError(f"no test/ or val/ split in {root}: add {root}/test/<class>/* "
                        f"with the same class folders as {train_dir}")
    train = _read_split(train_dir, image_size)
    test = _read_split(test_dir, image_size)
    if test.classes != train.classes:
        raise UserError(f"{test_dir} has classes {test.classes} but {train_dir} has "
                        f"{train.classes}: give both splits the same class folders")
    return train, test


def _read_split(split_dir, image_size):
    classes, class_to_index = torchvision.datasets.folder.find_classes(split_dir)
    samples = []
    for class_name in classes:
        class_dir = split_dir / class_name
        files = sorted(path for path in class_dir.rglob("*")
                       if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise UserError(f"class folder {class_dir} has no images (extensions "
                            f"{', '.join(IMAGE_EXTENSIONS)}): add images or remove the folder")
        samples += [(path, class_to_index[class_name]) for path in files]
    images = torch.stack([read_image(path, image_size) for path, _ in samples])
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return ImageData(images, labels, classes)


def read_image(path, image_size):
    """One RGB uint8 image, its shorter side resized to image_size, then centre-cropped."""
    try:
        with Image.open(path) as image:
            image = _as_rgb(image)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        # SyntaxError: PIL's parsers raise it for some malformed headers.
        raise UserError(f"cannot read image {path} ({error}): fix or remove the file") from None
    tensor = TF.pil_to_tensor(image)
    tensor = TF.resize(tensor, image_size, antialias=True)
    return TF.center_crop(tensor, [image_size, image_size])


def _as_rgb(image):
    """RGB uint8 from any mode PIL opens: 16-bit grayscale is scaled, not clipped, to 8 bits
    (PIL's own conversion would turn most of a 16-bit image white); alpha and palettes are
    dropped as torchvision's ImageFolder loader does."""
    if image.mode.startswith("I"):
        array = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or array.max() > 255:
            array = array / 257.0
        image = Image.fromarray(array.round().clip(0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


# --- synthetic ----------------------------------------------------------------------------

def make_synthetic(seed=0, image_size=32, num_classes=10, train_size=5000, test_size=1000):
    """A deterministic, learnable stand-in for CIFAR: each class is a smooth colour pattern.

    The class shows in every pixel region (a low-frequency pattern plus a class colour), so
    it survives crops and flips and a correct training loop learns it within an epoch or
    two on a CPU; per-image noise and brightness keep it from being trivial.
    """
    generator = torch.Generator().manual_seed(seed)
    patterns = torch.rand(num_classes, 3, 4, 4, generator=generator) * 2 - 1
    patterns = F.interpolate(patterns, size=(image_size, image_size), mode="bilinear",
                             align_corners=False)
    colours = torch.rand(num_classes, 3, 1, 1, generator=generator) * 2 - 1
    classes = [f"class{index}" for index in range(num_classes)]

    def draw(count):
        labels = torch.arange(count) % num_classes
        labels = labels[torch.randperm(count, generator=generator)]
        noise = torch.randn(count, 3, image_size, image_size, generator=generator)
        brightness = torch.randn(count, 1, 1, 1, generator=generator) * 0.15
        pixels = 0.5 + 0.25 * patterns[labels] + 0.15 * colours[labels] + 0.12 * noise + brightness
        images = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
        return ImageData(images, labels, classes)

    return draw(train_size), draw(test_size)


# --- splits: a class-balanced validation set and training subset (seeded) -------------------

def balanced_indices(labels, num_classes, count, generator, what):
    """Indices of `count` images, as equal per class as possible, each class shuffled."""
    chosen = []
    for label in range(num_classes):
        quota = count // num_classes + (1 if label < count % num_classes else 0)
        members = torch.nonzero(labels == label).flatten()
        if quota > len(members):
            raise UserError(f"{what} of {count} needs {quota} images of class {label} but there "
                            f"are only {len(members)}: choose a smaller value")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:quota]])
    return torch.cat(chosen).sort().values


def split_validation(data, val_size, seed):
    """Return (train, val): val_size class-balanced images held out of `data`."""
    if val_size >= len(data):
        raise UserError(f"--val-size {val_size} leaves no training images (the training set has "
                        f"{len(data)}): choose a smaller --val-size")
    generator = torch.Generator().manual_seed(seed)
    val_index = balanced_indices(data.labels, len(data.classes), val_size, generator, "--val-size")
    keep = torch.ones(len(data), dtype=torch.bool)
    keep[val_index] = False
    return data.select(torch.nonzero(keep).flatten()), data.select(val_index)


def take_subset(data, size, seed):
    """A class-balanced training subset of `size` images."""
    if size > len(data):
        raise UserError(f"--subset {size} is larger than the {len(data)} training images left "
                        f"after the validation split: choose --subset {len(data)} or less")
    generator = torch.Generator().manual_seed(seed + 1)  # independent of the validation draw
    return data.select(balanced_indices(data.labels, len(data.classes), size, generator, "--subset"))
