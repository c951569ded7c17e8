"""Data sources, the balanced split and subset, and the on-device loader."""
import pickle

import pytest
import torch
from PIL import Image

from engine.augment import CropFlip
from engine.errors import UserError
from engine.loader import DeviceLoader, Normalizer, channel_stats
from engine.sources import ImageData, load_image_folder, load_torchvision, make_synthetic
from engine.sources import split_validation, take_subset


# --- synthetic -------------------------------------------------------------------------

def test_synthetic_is_deterministic_from_its_seed():
    first, _ = make_synthetic(seed=3, train_size=50, test_size=10)
    again, _ = make_synthetic(seed=3, train_size=50, test_size=10)
    other, _ = make_synthetic(seed=4, train_size=50, test_size=10)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert not torch.equal(first.images, other.images)
    assert first.images.dtype == torch.uint8 and first.images.shape == (50, 3, 32, 32)
    assert first.labels.dtype == torch.int64


def test_synthetic_classes_are_visible_in_the_pixels():
    # A nearest-class-mean classifier on raw pixels must beat chance by far: the data is
    # learnable, so a training loop that fails to learn it is broken.
    train, test = make_synthetic(train_size=1000, test_size=200)
    means = torch.stack([train.images[train.labels == c].float().mean(0) for c in range(10)])
    distances = torch.cdist(test.images.float().flatten(1), means.flatten(1))
    accuracy = (distances.argmin(1) == test.labels).float().mean()
    assert accuracy > 0.8


# --- split and subset --------------------------------------------------------------------

def _labelled(count, classes=4):
    labels = torch.arange(count) % classes
    images = labels.view(-1, 1, 1, 1).expand(count, 3, 2, 2).to(torch.uint8).clone()
    return ImageData(images, labels, [f"c{i}" for i in range(classes)])


def test_validation_split_is_balanced_disjoint_and_seeded():
    data = _labelled(400)
    data.images[:, 0, 0, 0] = torch.arange(400) % 256  # identify images
    data.images[:, 0, 0, 1] = torch.arange(400) // 256
    train, val = split_validation(data, 40, seed=0)
    assert len(train) == 360 and len(val) == 40
    assert val.labels.bincount().tolist() == [10, 10, 10, 10]
    ids = lambda d: set((d.images[:, 0, 0, 0].long() + 256 * d.images[:, 0, 0, 1].long()).tolist())
    assert not ids(train) & ids(val) and len(ids(train) | ids(val)) == 400
    _, same = split_validation(data, 40, seed=0)
    _, other = split_validation(data, 40, seed=1)
    assert ids(same) == ids(val) and ids(other) != ids(val)
    # Labels stay with their images.
    assert torch.equal(val.images[:, 1, 0, 0].long(), val.labels)


def test_subset_is_class_balanced():
    subset = take_subset(_labelled(400), 42, seed=0)
    assert subset.labels.bincount().tolist() == [11, 11, 10, 10]


def test_sizes_too_large_are_refused():
    with pytest.raises(UserError, match="--val-size 400 leaves no training images"):
        split_validation(_labelled(400), 400, 0)


def test_a_subset_as_large_as_the_set_or_larger_is_the_whole_set():
    data = _labelled(400)
    for size in (400, 5000):  # a part's default subset on a small dataset
        assert take_subset(data, size, seed=0) is data


def test_a_subset_the_classes_cannot_fill_suggests_a_value_that_works():
    # 127 images of class 0, 130 of each other class (a small folder of one's own).
    labels = torch.cat([torch.zeros(127, dtype=torch.long), torch.arange(1, 10).repeat(130)])
    data = ImageData(torch.zeros(len(labels), 3, 2, 2, dtype=torch.uint8), labels,
                     [str(label) for label in range(10)])
    with pytest.raises(UserError) as refused:
        take_subset(data, 1294, seed=0)
    message = str(refused.value)
    assert "--subset 1294 needs 130 images of class 0 but there are only 127" in message
    suggested = int(message.split("choose --subset ")[1].split()[0])
    # By hand: a balanced draw gives the first count % 10 classes one image more, class 0
    # first, so class 0's 127 cap it at 127 per class: 1270.
    assert suggested == 1270
    subset = take_subset(data, suggested, seed=0)
    assert len(subset) == 1270 and subset.labels.bincount().tolist() == [127] * 10


# --- loader ------------------------------------------------------------------------------

def _numbered(count):
    """Images whose pixels spell their index, so batches can be traced back."""
    index = torch.arange(count)
    images = torch.zeros(count, 3, 8, 8, dtype=torch.uint8)
    images[:, 0] = (index % 256).view(-1, 1, 1).to(torch.uint8)
    images[:, 1] = (index // 256).view(-1, 1, 1).to(torch.uint8)
    images[:, 2] = (index % 10).view(-1, 1, 1).to(torch.uint8)
    return ImageData(images, index % 10, [str(i) for i in range(10)])


def _identity_normalizer():
    return Normalizer((0, 0, 0), (1 / 255, 1 / 255, 1 / 255), "cpu", channels_last=False)


def test_loader_yields_every_image_once_per_epoch_in_a_new_order():
    loader = DeviceLoader(_numbered(300), 64, "cpu", _identity_normalizer(), shuffle=True,
                          drop_last=False)
    orders = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        seen = []
        for inputs, labels in loader:
            ids = (inputs[:, 0, 0, 0] + 256 * inputs[:, 1, 0, 0]).round().long()
            assert torch.equal(labels, ids % 10)  # labels stay with their images
            seen.append(ids)
        seen = torch.cat(seen)
        assert sorted(seen.tolist()) == list(range(300))
        orders.append(seen)
    assert not torch.equal(orders[0], orders[1])
    loader.set_epoch(0)  # the same epoch gives the same order: resume needs no state
    assert torch.equal(torch.cat([(x[:, 0, 0, 0] + 256 * x[:, 1, 0, 0]).round().long()
                                  for x, _ in loader]), orders[0])


def test_drop_last_keeps_batches_full():
    loader = DeviceLoader(_numbered(300), 64, "cpu", _identity_normalizer(), shuffle=True,
                          drop_last=True)
    assert len(loader) == 4 and [len(labels) for _, labels in loader] == [64] * 4


def test_training_augmentation_is_per_image_and_keeps_labels():
    data = _numbered(256)
    data.images[:, :, 2:6, 2:6] = 200  # content to move around
    loader = DeviceLoader(data, 256, "cpu", _identity_normalizer(), shuffle=False,
                          drop_last=False, augment=CropFlip(padding=2))
    inputs, labels = next(iter(loader))
    assert torch.equal(labels, torch.arange(256) % 10)
    # Where the bright square landed differs between images of one batch.
    positions = {tuple(torch.nonzero(x[0] > 150).min(0).values.tolist()) for x in inputs}
    assert len(positions) > 5


def test_normalizer_standardises_and_lays_out_channels_last():
    train, _ = make_synthetic(train_size=200, test_size=10)
    mean, std = channel_stats(train.images)
    pixels = train.images.double() / 255
    assert torch.allclose(torch.tensor(mean, dtype=torch.float64), pixels.mean((0, 2, 3)), atol=1e-9)
    assert torch.allclose(torch.tensor(std, dtype=torch.float64), pixels.std((0, 2, 3)), atol=1e-3)
    batch = Normalizer(mean, std, "cpu", image_size=64)(train.images)
    assert batch.shape == (200, 3, 64, 64) and batch.dtype == torch.float32
    assert batch.is_contiguous(memory_format=torch.channels_last)
    assert abs(batch.mean().item()) < 0.05 and abs(batch.std().item() - 1) < 0.1


# --- folder ------------------------------------------------------------------------------

def test_folder_tree_loads_resized_with_class_names(image_tree):
    train, test = load_image_folder(image_tree, 32)
    assert train.classes == ["cat", "dog", "frog"] and test.classes == train.classes
    assert train.images.shape == (36, 3, 32, 32) and test.images.shape == (12, 3, 32, 32)
    assert train.labels.bincount().tolist() == [12, 12, 12]


def test_folder_accepts_val_instead_of_test(tmp_path):
    from conftest import write_image_tree
    root = write_image_tree(tmp_path / "t", per_class=(3, 2), splits=("train", "val"))
    _, test = load_image_folder(root, 16)
    assert len(test) == 6


def test_folder_without_train_split(tmp_path):
    with pytest.raises(UserError, match=f"no train/ split in {tmp_path}"):
        load_image_folder(tmp_path, 32)


def test_folder_with_an_empty_class(image_tree):
    (image_tree / "train" / "emu").mkdir()
    with pytest.raises(UserError, match=r"class folder .*train/emu has no images"):
        load_image_folder(image_tree, 32)


def test_folder_with_an_unreadable_image(image_tree):
    broken = image_tree / "train" / "dog" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(UserError, match=r"cannot read image .*dog/broken.png"):
        load_image_folder(image_tree, 32)


def test_folder_with_mismatched_classes(image_tree):
    (image_tree / "test" / "emu").mkdir()
    Image.new("RGB", (8, 8)).save(image_tree / "test" / "emu" / "a.png")
    with pytest.raises(UserError, match="same class folders"):
        load_image_folder(image_tree, 32)


# --- CIFAR (no network here: the real download path fails, which is what we test) --------

@pytest.fixture
def no_network(monkeypatch):
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")


def test_cifar_absent_and_offline_names_the_files(tmp_path, no_network):
    with pytest.raises(UserError) as raised:
        load_torchvision("cifar10", tmp_path)
    message = str(raised.value)
    assert "\n" not in message
    assert f"{tmp_path}/cifar-10-python.tar.gz" in message
    assert f"{tmp_path}/cifar-10-batches-py/" in message
    assert "--dataset folder" in message and "--dataset synthetic" in message


def test_cifar_files_failing_checksums_are_refused_unread(tmp_path, no_network):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "unpickled"
    # A batch file that would run code if unpickled: it must never be unpickled.
    payload = _code_pickle(marker)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                 "data_batch_5", "test_batch", "batches.meta"]:
        (folder / name).write_bytes(payload)
    with pytest.raises(UserError, match="fail their MD5 checksums"):
        load_torchvision("cifar10", tmp_path)
    assert not marker.exists()


def _code_pickle(marker):
    """Pickle bytes that call pathlib.Path.touch(marker) when unpickled."""
    import pathlib

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (pathlib.Path(marker),))

    return pickle.dumps(Payload())
