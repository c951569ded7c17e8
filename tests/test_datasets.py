"""MNIST, Fashion-MNIST, SVHN and STL-10 through torchvision's classes (engine/sources.py), and
weights files in the checkpoint layouts of common training code (engine/pretrained.py).

Every dataset file is generated here, a few images in each set's exact on-disk format: IDX
(gzipped, as downloaded) for the MNIST family, MATLAB .mat for SVHN, STL-10's column-major
binary. torchvision checks files against the MD5s in its classes' attributes: MNIST.resources
(the .gz archives, when it extracts them), SVHN.split_list and STL10.train_list/test_list (every
load). Generated files cannot have the real sums, so `write_valid` points those attributes at
the generated files' MD5s with monkeypatch and torchvision's own check runs on them, unchanged.
Nothing is downloaded: every download torchvision starts is recorded and fails as it does
without network (`downloads`).
"""
import argparse
import gzip
import hashlib
import importlib
import json
import struct
import urllib.error

import numpy as np
import pytest
import scipy.io
import torch
import torchvision
import torchvision.transforms.v2.functional as TF
from torchvision.datasets import MNIST, STL10, SVHN, FashionMNIST

from engine import activations, pretrained
from engine.errors import UserError
from engine.sources import DIGITS, STL10_CLASSES, load_torchvision
from models import build_model

TRAIN, TEST = 20, 10  # images per generated split: every class, in label order 0..9, 0..9


@pytest.fixture
def downloads(monkeypatch):
    """The URLs torchvision tries to download, each refused like an offline machine's."""
    attempts = []

    def refuse(url, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torchvision.datasets.utils, "_get_redirect_url", refuse)
    monkeypatch.setattr(torchvision.datasets.utils, "_urlretrieve", refuse)
    return attempts


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def labelled_images(count, side, channels=None):
    """uint8 images (N, [C,] side, side) and labels 0..9 in turn: each image's brightness is
    20 * label + 10 and its top eighth is white, so a transposed or flipped load shows."""
    labels = np.arange(count) % 10
    shape = (count, side, side) if channels is None else (count, channels, side, side)
    images = np.empty(shape, dtype=np.uint8)
    images[...] = (20 * labels + 10).reshape(-1, *[1] * (len(shape) - 1))
    images[..., : side // 8, :] = 255
    return images, labels


# --- the files, as each dataset's archive holds them ---------------------------------------

def idx_bytes(array):
    """LeCun's IDX format: bytes 0, 0, 0x08 (unsigned bytes), the number of dimensions; each
    size as a big-endian int32; the data."""
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.tobytes()


def write_mnist(root, dataset_class, counts=(TRAIN, TEST), gzipped=True):
    """The four IDX files in ROOT/<class name>/raw/ (gzipped as downloaded, or as extracted);
    returns the folder and torchvision's `resources` list with the files' MD5s."""
    folder = root / dataset_class.__name__ / "raw"
    folder.mkdir(parents=True)
    resources = []
    for prefix, count in zip(("train", "t10k"), counts):
        images, labels = labelled_images(count, 28)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels.astype(np.uint8))):
            name = f"{prefix}-{kind}-ubyte.gz"
            path = folder / (name if gzipped else name.removesuffix(".gz"))
            path.write_bytes(gzip.compress(idx_bytes(array)) if gzipped else idx_bytes(array))
            resources.append((name, md5(path) if gzipped else None))
    return folder, resources


def write_svhn(root, counts=(("train", TRAIN), ("test", TEST))):
    """SVHN's <split>_32x32.mat in ROOT: X of shape (32, 32, 3, N), y of shape (N, 1) with the
    digit 0 labelled 10; returns torchvision's `split_list` with the files' MD5s."""
    split_list = dict(SVHN.split_list)
    for split, count in counts:
        images, labels = labelled_images(count, 32, channels=3)
        url, name, _ = split_list[split]
        scipy.io.savemat(root / name, {"X": images.transpose(2, 3, 1, 0),
                                       "y": np.where(labels == 0, 10, labels)[:, None]
                                       .astype(np.uint8)})
        split_list[split] = [url, name, md5(root / name)]
    return split_list


def write_stl10(root):
    """stl10_binary/ as STL-10's archive holds it: <split>_X.bin of (N, 3, 96, 96) uint8 images,
    each channel stored column-major; <split>_y.bin of labels 1..10; class_names.txt. Returns
    torchvision's train_list and test_list with the files' MD5s."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    for split, count in (("train", TRAIN), ("test", TEST), ("unlabeled", 1)):
        images, labels = labelled_images(count, 96, channels=3)
        (folder / f"{split}_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())
        if split != "unlabeled":
            (folder / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
    (folder / "class_names.txt").write_text("\n".join(STL10_CLASSES) + "\n")
    listed = lambda names: [[name, md5(folder / name)] for name in names]  # noqa: E731
    return (listed(["train_X.bin", "train_y.bin", "unlabeled_X.bin"]),
            listed(["test_X.bin", "test_y.bin"]))


def write_valid(name, root, monkeypatch):
    """`name`'s files in root, with torchvision checking them against their own MD5s."""
    if name in ("mnist", "fashion-mnist"):
        dataset_class = MNIST if name == "mnist" else FashionMNIST
        folder, resources = write_mnist(root, dataset_class)
        monkeypatch.setattr(dataset_class, "resources", resources)
        return folder
    if name == "svhn":
        monkeypatch.setattr(SVHN, "split_list", write_svhn(root))
        return root
    train_list, test_list = write_stl10(root)
    monkeypatch.setattr(STL10, "train_list", train_list)
    monkeypatch.setattr(STL10, "test_list", test_list)
    return root / "stl10_binary"


# --- loading --------------------------------------------------------------------------------

@pytest.mark.parametrize("name,dataset_class", [("mnist", MNIST),
                                                ("fashion-mnist", FashionMNIST)])
def test_mnist_family_loads_padded_to_32_with_three_channels(tmp_path, monkeypatch, downloads,
                                                             name, dataset_class):
    folder = write_valid(name, tmp_path, monkeypatch)
    train, test = load_torchvision(name, tmp_path)
    assert downloads == []  # the .gz files passed their MD5 check, and were extracted
    assert train.images.shape == (TRAIN, 3, 32, 32) and test.images.shape == (TEST, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.classes == test.classes == dataset_class.classes
    pixels, labels = labelled_images(TEST, 28)
    assert test.labels.tolist() == labels.tolist()
    # Padded, not resized: the 28x28 pixels exact in the middle, a zero border, equal channels.
    assert torch.equal(test.images[:, 0, 2:30, 2:30], torch.from_numpy(pixels))
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert test.images[:, :, border].eq(0).all()
    assert torch.equal(test.images[:, 1], test.images[:, 0])
    assert torch.equal(test.images[:, 2], test.images[:, 0])
    # The extracted files alone load too (torchvision only checks that they exist).
    for archive in folder.glob("*.gz"):
        archive.unlink()
    again, _ = load_torchvision(name, tmp_path)
    assert torch.equal(again.images, train.images) and downloads == []


def test_svhn_loads_with_digit_names_and_optional_extra(tmp_path, monkeypatch, downloads):
    monkeypatch.setattr(SVHN, "split_list", write_svhn(
        tmp_path, (("train", TRAIN), ("extra", 5), ("test", TEST))))
    train, test = load_torchvision("svhn", tmp_path)
    assert downloads == []
    assert train.images.shape == (TRAIN, 3, 32, 32) and test.images.shape == (TEST, 3, 32, 32)
    assert train.classes == test.classes == DIGITS == [str(digit) for digit in range(10)]
    pixels, labels = labelled_images(TEST, 32, channels=3)
    assert test.labels.tolist() == labels.tolist()  # the file's 10 is the digit 0
    assert torch.equal(test.images, torch.from_numpy(pixels))  # orientation kept
    with_extra, _ = load_torchvision("svhn-extra", tmp_path)
    assert len(with_extra) == TRAIN + 5 and torch.equal(with_extra.images[:TRAIN], train.images)


def test_stl10_loads_resized_to_32(tmp_path, monkeypatch, downloads):
    folder = write_valid("stl10", tmp_path, monkeypatch)
    train, test = load_torchvision("stl10", tmp_path)
    assert downloads == []
    assert train.images.shape == (TRAIN, 3, 32, 32) and test.images.shape == (TEST, 3, 32, 32)
    assert train.classes == test.classes == STL10_CLASSES
    pixels, labels = labelled_images(TEST, 96, channels=3)
    assert test.labels.tolist() == labels.tolist()  # the file's 1..10 as 0..9
    # 96 -> 32 once, antialiased, the right way up (the white band on top).
    assert torch.equal(test.images, TF.resize(torch.from_numpy(pixels), [32, 32], antialias=True))
    assert test.images[:, :, 0].eq(255).all() and test.images[:, :, -1].ne(255).all()
    (folder / "class_names.txt").unlink()  # torchvision then has no names: ours are the file's
    assert load_torchvision("stl10", tmp_path)[1].classes == STL10_CLASSES


# --- refusals -------------------------------------------------------------------------------

def corrupt(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name,file_name", [("mnist", "train-images-idx3-ubyte.gz"),
                                            ("fashion-mnist", "t10k-labels-idx1-ubyte.gz"),
                                            ("svhn", "test_32x32.mat"),
                                            ("stl10", "train_X.bin")])
def test_a_file_failing_its_md5_is_refused_in_one_line(tmp_path, monkeypatch, downloads, name,
                                                       file_name):
    corrupt(write_valid(name, tmp_path, monkeypatch) / file_name)
    with pytest.raises(UserError) as raised:
        load_torchvision(name, tmp_path)
    message = str(raised.value)
    assert "\n" not in message and "fail their MD5 checksums" in message, message
    assert f"({file_name})" in message and "no network in tests" in message
    assert downloads  # a fresh copy was sought (and could not be had) before refusing


@pytest.mark.parametrize("damage,reason", [
    (lambda folder: (folder / "t10k-images-idx3-ubyte").write_bytes(
        (folder / "t10k-images-idx3-ubyte").read_bytes()[:500]), "shape '[10, 28, 28]' is invalid"),
    (lambda folder: (folder / "t10k-labels-idx1-ubyte").write_bytes(
        idx_bytes(np.zeros(9, dtype=np.uint8))), "10 images but 9 labels"),
    (lambda folder: (folder / "t10k-labels-idx1-ubyte").write_bytes(
        idx_bytes(np.full(10, 10, dtype=np.uint8))), "labels, from 10 to 10 for 10 classes"),
])
def test_a_damaged_extracted_mnist_file_is_refused_in_one_line(tmp_path, downloads, damage,
                                                               reason):
    # Extracted IDX files have no checksum in torchvision: its parser checks their headers and
    # sizes, engine.sources the number of labels and their range.
    folder, _ = write_mnist(tmp_path, MNIST, gzipped=False)
    damage(folder)
    with pytest.raises(UserError) as raised:
        load_torchvision("mnist", tmp_path)
    message = str(raised.value)
    assert "\n" not in message and f"MNIST in {tmp_path} could not be loaded (" in message
    assert reason in message and f"in {folder}/" in message and downloads == []


@pytest.mark.parametrize("name,expected", [
    ("mnist", ["MNIST/raw/", "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
               "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (or them gunzipped)"]),
    ("fashion-mnist", ["FashionMNIST/raw/", "train-images-idx3-ubyte.gz"]),
    ("svhn", ["train_32x32.mat, test_32x32.mat in {root}/"]),
    ("svhn-extra", ["train_32x32.mat, extra_32x32.mat, test_32x32.mat in {root}/"]),
    ("stl10", ["stl10_binary.tar.gz at {root}/stl10_binary.tar.gz", "stl10_binary/ (train_X.bin, "
               "train_y.bin, unlabeled_X.bin, test_X.bin, test_y.bin) at {root}/stl10_binary/"]),
])
def test_absent_and_offline_names_the_files_torchvision_expects(tmp_path, downloads, name,
                                                                 expected):
    with pytest.raises(UserError) as raised:
        load_torchvision(name, tmp_path)
    message = str(raised.value)
    assert "\n" not in message and downloads
    assert f"is not in {tmp_path} and could not be downloaded (" in message
    for fragment in expected:
        assert fragment.format(root=tmp_path) in message, message
    assert "--data-dir" in message and "--dataset synthetic" in message


# --- the scripts ------------------------------------------------------------------------------

def test_every_part_script_accepts_the_datasets():
    for script in ("train_scratch", "train_transfer", "augment_study", "dropout_sweep"):
        parser = importlib.import_module(script).get_args_parser()
        for name in ("mnist", "fashion-mnist", "svhn", "svhn-extra", "stl10"):
            assert parser.parse_args(["--dataset", name]).dataset == name


def test_train_on_fashion_mnist_then_pick_a_test_image_by_class_name(tmp_path, monkeypatch,
                                                                     downloads):
    import train_scratch
    import visualize_activations
    data = tmp_path / "data"
    _, resources = write_mnist(data, FashionMNIST, counts=(100, 20))
    monkeypatch.setattr(FashionMNIST, "resources", resources)
    train_scratch.main(train_scratch.get_args_parser().parse_args([
        "--dataset", "fashion-mnist", "--data-dir", str(data), "--val-size", "10", "--epochs",
        "1", "--batch-size", "30", "--width", "8", "--no-progress", "--out", str(tmp_path / "s")]))
    run = tmp_path / "s" / "fashion-mnist" / "seed0"
    config = json.loads((run / "config.json").read_text())
    assert config["classes"] == FashionMNIST.classes
    assert config["sizes"] == {"train": 90, "val": 10, "test": 20}

    out = tmp_path / "vis"
    visualize_activations.main(visualize_activations.get_args_parser().parse_args([
        "--run", str(run), "--class", "Sneaker", "--layers", "layer1", "--out", str(out)]))
    predictions = json.loads((out / "predictions.json").read_text())
    assert predictions["true_class"] == "Sneaker"
    assert "fashion-mnist test image 7 (Sneaker)" in predictions["image"]
    # A class index names the same class (for MNIST's "7 - seven", --class 7).
    subject = activations.load_run(run)
    assert activations.dataset_picture(subject, class_wanted="7", index=1).label == "test17_Sneaker"
    assert downloads == []


def test_stl10_default_picture_is_the_first_car(tmp_path, monkeypatch, downloads):
    write_valid("stl10", tmp_path, monkeypatch)
    subject = activations.Subject(model=None, classes=STL10_CLASSES, mean=(0.5,) * 3,
                                  std=(0.25,) * 3, stored_size=32, input_size=32, label="run",
                                  description="run",
                                  config={"dataset": "stl10", "args": {"data_dir": str(tmp_path)}})
    picture = activations.dataset_picture(subject)
    assert picture.true_class == "car" and picture.label == "test2_car"
    assert picture.pixels.shape == (3, 32, 32)


# --- weights files in the layouts of common training code ------------------------------------

def saved_layouts(state, optimizer_state):
    """The same weights as common CIFAR and ImageNet training code saves them."""
    prefixed = lambda prefix: {prefix + key: value for key, value in state.items()}  # noqa: E731
    return {
        "plain state dict": state,
        # kuangliu/pytorch-cifar main.py: net = DataParallel(net) on CUDA; ./checkpoint/ckpt.pth
        "kuangliu, DataParallel": {"net": prefixed("module."), "acc": 95.44, "epoch": 199},
        "kuangliu, CPU": {"net": state, "acc": 41.0, "epoch": 0},
        # torchvision references/classification/train.py, with its argparse.Namespace
        "torchvision references": {
            "model": state, "optimizer": optimizer_state, "lr_scheduler": {"last_epoch": 3},
            "epoch": 3, "args": argparse.Namespace(model="resnet18", lr=0.1, amp=False),
            "model_ema": prefixed("module.")},
        # PyTorch Lightning: the LightningModule's state dict, the network as self.model/.net
        "Lightning, self.model": {
            "epoch": 9, "global_step": 1000, "pytorch-lightning_version": "2.4.0",
            "state_dict": prefixed("model."), "optimizer_states": [optimizer_state],
            "lr_schedulers": [], "hyper_parameters": {"lr": 0.05}, "callbacks": {}},
        "Lightning, self.net": {"epoch": 9, "state_dict": prefixed("net.")},
    }


LAYOUTS = list(saved_layouts({}, {}))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_checkpoint_layout_gives_the_plain_state_dicts_logits(tmp_path, monkeypatch, layout):
    torch.manual_seed(0)
    trained = build_model({"name": "resnet18_cifar", "num_classes": 10, "width": 8})
    trained(torch.randn(8, 3, 32, 32))  # running statistics of its own
    optimizer_state = torch.optim.SGD(trained.parameters(), lr=0.1, momentum=0.9).state_dict()
    files = {}
    for name, saved in saved_layouts(trained.state_dict(), optimizer_state).items():
        files[name] = tmp_path / f"{len(files)}.pth"
        torch.save(saved, files[name])
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k) or real_load(*a, **k))

    plain = activations.build_bare("scratch", files["plain state dict"]).model.eval()
    loaded = activations.build_bare("scratch", files[layout]).model.eval()

    inputs = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(inputs), plain(inputs))
        assert torch.equal(plain(inputs), trained.eval()(inputs))
    assert len(loads) == 2 and all(k.get("weights_only") is True for k in loads)


def test_lightning_layout_of_torchvision_resnet18_loads_for_transfer(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    torch.save({"state_dict": {f"model.{key}": value for key, value in state.items()}},
               tmp_path / "lightning.ckpt")
    model = pretrained.model_from_spec({"name": "torchvision_resnet18", "num_classes": 10,
                                        "weights": str(tmp_path / "lightning.ckpt")})
    assert torch.equal(model.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])


def test_weights_whose_keys_do_not_fit_get_one_line_naming_them(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"net": {f"module.{key}": value for key, value in
                        torchvision.models.resnet18().state_dict().items()}}, path)
    with pytest.raises(UserError) as raised:
        activations.build_bare("scratch", path)
    message = str(raised.value)
    assert "\n" not in message
    assert f"weights file {path} does not fit the hand-written CIFAR ResNet-18 (" in message
    assert "missing keys layer2.0.shortcut.0.weight" in message and "more" in message
    assert "unexpected keys layer2.0.downsample.0.weight" in message
    assert "conv1.weight (64, 3, 7, 7) in the file, (64, 3, 3, 3) in the model" in message
    assert "--model transfer" in message
