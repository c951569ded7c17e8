"""Datasets as (train, test) ImageData: uint8 images small enough to live on the training device
(CIFAR-10: 150 MB); the seeded, class-balanced validation split and training subset.
The sources, their layout and checks: docs/datasets.md.
"""
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.v2.functional as TF
from PIL import Image, UnidentifiedImageError
from torchvision.datasets.utils import check_integrity

from engine.checkpoint import one_line
from engine.errors import UserError

SOURCES = ("cifar10", "cifar100", "mnist", "fashion-mnist", "svhn", "svhn-extra", "stl10",
           "folder", "synthetic")
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
    if name in _TORCHVISION:
        return load_torchvision(name, Path(data_dir))
    if name == "folder":
        return load_image_folder(Path(data_dir), image_size)
    if name == "synthetic":
        return make_synthetic(image_size=image_size)
    raise UserError(f"unknown dataset {name!r}: choose one of {', '.join(SOURCES)}")


# --- torchvision's datasets ------------------------------------------------------------

class Torchvision(NamedTuple):
    title: str
    dataset_class: type
    train_splits: tuple  # torchvision's own split arguments: train=True/False for CIFAR and
    test_split: object   # MNIST, split="train"/"extra"/"test" for SVHN and STL-10
    layout: str          # of the class's .data array
    classes: list = None  # where the class has no .classes


DIGITS = [str(digit) for digit in range(10)]  # SVHN's names (torchvision maps its label 10 to 0)
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship",
                 "truck"]  # stl10_binary/class_names.txt's, for a copy without that file
_TORCHVISION = {
    "cifar10": Torchvision("CIFAR-10", torchvision.datasets.CIFAR10, (True,), False, "NHWC"),
    "cifar100": Torchvision("CIFAR-100", torchvision.datasets.CIFAR100, (True,), False, "NHWC"),
    "mnist": Torchvision("MNIST", torchvision.datasets.MNIST, (True,), False, "NHW"),
    "fashion-mnist": Torchvision("Fashion-MNIST", torchvision.datasets.FashionMNIST, (True,),
                                 False, "NHW"),
    "svhn": Torchvision("SVHN", torchvision.datasets.SVHN, ("train",), "test", "NCHW", DIGITS),
    "svhn-extra": Torchvision("SVHN", torchvision.datasets.SVHN, ("train", "extra"), "test",
                              "NCHW", DIGITS),
    "stl10": Torchvision("STL-10", torchvision.datasets.STL10, ("train",), "test", "NCHW",
                         STL10_CLASSES),
}
IMAGE_SIDE = 32  # every torchvision source is stored at the CIFAR networks' input size


def load_torchvision(name, root):
    """Through torchvision's own classes (their layout under `root`, download and checks)."""
    spec = _TORCHVISION[name]
    try:
        train = [_as_image_data(_open(spec.dataset_class, root, split), spec)
                 for split in spec.train_splits]
        test = _as_image_data(_open(spec.dataset_class, root, spec.test_split), spec)
    except Exception as error:  # URLError, OSError, RuntimeError, and the parsers' own errors
        raise UserError(_unavailable_message(spec, root, error)) from None
    if len(train) > 1:  # SVHN's extra images join its training split
        train = [ImageData(torch.cat([part.images for part in train]),
                           torch.cat([part.labels for part in train]), train[0].classes)]
    return train[0], test


def _open(dataset_class, root, split):
    """download=True fetches only what is missing or fails its check (docs/datasets.md, "Checksums,
    downloads, offline": the MNIST family's extracted files have no MD5)."""
    if isinstance(split, bool):
        return dataset_class(root, train=split, download=True)
    return dataset_class(root, split=split, download=True)


def _as_image_data(dataset, spec):
    images = torch.as_tensor(dataset.data)
    if spec.layout == "NHW":  # the MNIST family: 28x28 grayscale
        # Padded 2 black pixels a side, not resized: exact pixels, LeNet-5's input
        # (docs/datasets.md, "Why pad MNIST"). Three identical channels.
        images = F.pad(images, (2, 2, 2, 2))[:, None].expand(-1, 3, -1, -1)
    elif spec.layout == "NHWC":
        images = images.permute(0, 3, 1, 2)
    if images.shape[-1] != IMAGE_SIDE:  # STL-10's 96x96: resized once, antialiased
        images = TF.resize(images, [IMAGE_SIDE, IMAGE_SIDE], antialias=True)
    labels = getattr(dataset, "targets", None)
    labels = torch.as_tensor(np.asarray(dataset.labels if labels is None else labels),
                             dtype=torch.int64)
    classes = list(getattr(dataset, "classes", None) or spec.classes)
    if len(images) != len(labels) or not 0 <= int(labels.min()) <= int(labels.max()) < len(classes):
        raise ValueError(f"{len(images)} images but {len(labels)} labels, from "
                         f"{int(labels.min())} to {int(labels.max())} for {len(classes)} classes")
    return ImageData(images.contiguous(), labels, classes)


def _expected_files(dataset_class, root, splits):
    """(what to put where, in words; [(path, MD5 or None)] of the files torchvision looks for)."""
    if issubclass(dataset_class, torchvision.datasets.MNIST):
        folder = root / dataset_class.__name__ / "raw"
        names = [name for name, _ in dataset_class.resources]
        files = [(folder / name, md5) for name, md5 in dataset_class.resources]
        files += [(folder / name.removesuffix(".gz"), None) for name in names]
        return f"{', '.join(names)} (or them gunzipped) in {folder}/", files
    if dataset_class is torchvision.datasets.SVHN:
        files = [(root / dataset_class.split_list[split][1], dataset_class.split_list[split][2])
                 for split in splits]
        return f"{', '.join(path.name for path, _ in files)} in {root}/", files
    # CIFAR and STL-10: an archive, or the folder it extracts to
    folder, archive = root / dataset_class.base_folder, root / dataset_class.filename
    listed = dataset_class.train_list + dataset_class.test_list
    listed += [[dataset_class.meta["filename"], dataset_class.meta["md5"]]] if hasattr(
        dataset_class, "meta") else []
    files = [(folder / name, md5) for name, md5 in listed] + [(archive, dataset_class.tgz_md5)]
    return (f"{archive.name} at {archive} or the extracted {folder.name}/ "
            f"({', '.join(name for name, _ in listed)}) at {folder}/"), files


def _unavailable_message(spec, root, error):
    where, files = _expected_files(spec.dataset_class, root,
                                   spec.train_splits + (spec.test_split,))
    reason = textwrap.shorten(one_line(error), 200, placeholder=" ...")
    failing = [path.name for path, md5 in files
               if md5 and path.is_file() and not check_integrity(str(path), md5)]
    if failing:
        problem = (f"{spec.title} files in {root} fail their MD5 checksums "
                   f"({', '.join(failing)}) and a fresh copy could not be downloaded ({reason})")
    elif not any(path.exists() for path, _ in files):
        problem = f"{spec.title} is not in {root} and could not be downloaded ({reason})"
    else:
        problem = f"{spec.title} in {root} could not be loaded ({reason})"
    return (f"{problem}: put {where} (or pass --data-dir), or use --dataset folder for your own "
            f"images or --dataset synthetic to run offline")


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
    """RGB from any PIL mode: 16-bit scaled to 8 bits (PIL's convert clips: mostly white); alpha
    and palettes dropped as torchvision's ImageFolder loader does."""
    if image.mode.startswith("I"):
        array = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or array.max() > 255:
            array = array / 257.0
        image = Image.fromarray(array.round().clip(0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


# --- synthetic ----------------------------------------------------------------------------

def make_synthetic(seed=0, image_size=32, num_classes=10, train_size=5000, test_size=1000):
    """A stand-in for CIFAR that a correct loop learns in an epoch or two on a CPU: each class's
    smooth pattern and colour show in every region (surviving crops and flips), under noise."""
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

def balanced_quotas(count, num_classes):
    """Images per class of a class-balanced draw of `count`: the first count % K classes one more."""
    return [count // num_classes + (1 if label < count % num_classes else 0)
            for label in range(num_classes)]


def largest_balanced(class_sizes, count):
    """The largest class-balanced draw of at most `count` images that the classes can fill."""
    while count > 0 and any(quota > size for quota, size in
                            zip(balanced_quotas(count, len(class_sizes)), class_sizes)):
        count -= 1
    return count


def balanced_indices(labels, num_classes, count, generator, what):
    """Indices of `count` images, as equal per class as possible, each class shuffled."""
    sizes = torch.bincount(labels, minlength=num_classes).tolist()
    chosen = []
    for label, quota in enumerate(balanced_quotas(count, num_classes)):
        if quota > sizes[label]:
            raise UserError(f"{what} {count} needs {quota} images of class {label} but there are "
                            f"only {sizes[label]}: choose {what} "
                            f"{largest_balanced(sizes, count)} (the most a class-balanced draw "
                            f"allows) or less")
        members = torch.nonzero(labels == label).flatten()
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
    """A class-balanced training subset of `size` images; all of them where `size` is as many
    or more (a part's default subset on a small dataset: the start-up block says so)."""
    if size >= len(data):
        return data
    generator = torch.Generator().manual_seed(seed + 1)  # independent of the validation draw
    return data.select(balanced_indices(data.labels, len(data.classes), size, generator, "--subset"))
