"""The science: the numbers a run reports, each held against a computation written here.

Two runs are made once per session, in this process, on a tiny CIFAR-10 made by the test
(torchvision's CIFAR10 class handed our arrays, so the scripts read it as `--dataset cifar10`):
part (a)'s recipe and part (b)'s `scratch` configuration, each recording on the way the
batches its network trained on (part (a): what each crop + flip was given and gave; part (b),
which has no augmentation: the network's inputs). tests/reference_recipe.py retrains both from
the README's recipe in plain PyTorch on those batches; the runs' files must agree with it. The
other tests count classes, compute channel statistics, Grad-CAM and the schedule by hand, and
rerun the scripts with one flag changed.
"""
import csv
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import reference_recipe as reference
import train_scratch
import train_transfer
from engine import activations
from engine.augment import CropFlip
from engine.loop import make_scheduler
from engine.studies import write_study
from models import build_model

CLASSES = ["airplane", "automobile", "bird", "cat"]
TRAIN_PER_CLASS, TEST_PER_CLASS = 30, 15
VAL_SIZE, BATCH, EPOCHS = 24, 24, 2  # part (a): 96 training images, 4 steps an epoch
STEPS = (len(CLASSES) * TRAIN_PER_CLASS - VAL_SIZE) // BATCH
SCRATCH = ["--dataset", "cifar10", "--width", "8", "--val-size", VAL_SIZE, "--batch-size",
           BATCH, "--epochs", EPOCHS, "--no-progress"]
TRANSFER = ["--dataset", "cifar10", "--configs", "scratch", "--val-size", VAL_SIZE,
            "--batch-size", BATCH, "--epochs", EPOCHS, "--no-progress"]
REPORT_SCRATCH_TRANSFER_TEST = 0.738  # README, part (b): `scratch`, the report's test accuracy


def run_main(script, *args):
    return script.main(script.get_args_parser().parse_args([str(arg) for arg in args]))


# --- a tiny CIFAR-10 ---------------------------------------------------------------------------

def tiny_cifar10():
    """{train: (NHWC uint8 array, labels)} as torchvision's CIFAR10 holds them. Each class has
    its own colour under noise, two of them close (so a short run confuses them unevenly); the
    test set is brighter, so its channel statistics are not the training set's."""
    generator = torch.Generator().manual_seed(0)
    colours = torch.tensor([[200, 60, 60], [60, 200, 60], [70, 70, 190], [85, 80, 180.]])

    def draw(per_class, brightness):
        labels = torch.arange(len(CLASSES)).repeat(per_class)
        noise = torch.randn(len(labels), 32, 32, 3, generator=generator) * 45
        pixels = colours[labels][:, None, None] + noise + brightness
        return pixels.clamp(0, 255).round().to(torch.uint8).numpy(), labels.tolist()

    return {True: draw(TRAIN_PER_CLASS, 0), False: draw(TEST_PER_CLASS, 30)}


DATA = tiny_cifar10()


def fake_cifar10_init(self, root, train=True, transform=None, target_transform=None,
                      download=False):
    self.data, self.targets = DATA[train]
    self.classes = list(CLASSES)


def as_tensors(train):
    images, labels = DATA[train]
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


@pytest.fixture
def fake_cifar10(monkeypatch):
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "__init__", fake_cifar10_init)


# --- the two runs ------------------------------------------------------------------------------

@dataclass
class Recorded:
    run: Path      # the run directory
    study: Path    # its --out
    calls: list    # per crop + flip: (images in, images out, labels)


def recording_crop_flip(calls, stop_after=None):
    """CropFlip.__call__ that also records what it was given and gave."""
    original = CropFlip.__call__

    def call(self, images, labels, generator):
        augmented, targets = original(self, images, labels, generator)
        calls.append((images.clone(), augmented.clone(), labels.clone()))
        if stop_after is not None and len(calls) >= stop_after:
            raise SeenEnough
        return augmented, targets

    return call


class SeenEnough(Exception):
    pass


@pytest.fixture(scope="session")
def scratch_run(tmp_path_factory):
    study = tmp_path_factory.mktemp("science") / "scratch"
    calls = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torchvision.datasets.CIFAR10, "__init__", fake_cifar10_init)
        patch.setattr(CropFlip, "__call__", recording_crop_flip(calls))
        run_main(train_scratch, *SCRATCH, "--out", study)
    return Recorded(study / "cifar10" / "seed0", study, calls)


def recording_forward(model_class, inputs):
    """model_class.forward that also records its inputs in training mode (steps, and the
    passes that re-estimate BatchNorm)."""
    original = model_class.forward

    def forward(self, x):
        if self.training:
            inputs.append(x.detach().clone())
        return original(self, x)

    return forward


@pytest.fixture(scope="session")
def transfer_run(tmp_path_factory):
    study = tmp_path_factory.mktemp("science") / "transfer"
    inputs = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torchvision.datasets.CIFAR10, "__init__", fake_cifar10_init)
        patch.setattr(torchvision.models.ResNet, "forward",
                      recording_forward(torchvision.models.ResNet, inputs))
        run_main(train_transfer, *TRANSFER, "--out", study)
    return Recorded(study / "scratch" / "seed0", study, inputs)


def read_json(path):
    return json.loads(Path(path).read_text())


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def image_keys(images):
    return [image.numpy().tobytes() for image in images]


def training_split(recorded):
    """The images the run trained on: those of its first epoch's crop + flip calls."""
    return torch.cat([inputs for inputs, _, _ in recorded.calls[:STEPS]])


def saved_model(run):
    """The run's network as its checkpoint holds it, and its config."""
    config = read_json(run / "config.json")
    model = build_model(config["model"])
    model.load_state_dict(torch.load(run / "checkpoint.pt", weights_only=True)["model"])
    return model.eval(), config


def logits_of(run, images):
    """The saved network's logits for uint8 images, normalised as config.json says."""
    model, config = saved_model(run)
    mean, std = (torch.tensor(config["normalization"][key]).view(1, 3, 1, 1)
                 for key in ("mean", "std"))
    with torch.no_grad():
        return model((images.float() / 255 - mean) / std)


def assert_same_state(engine_state, reference_state):
    assert engine_state.keys() == reference_state.keys()
    for key, value in reference_state.items():
        torch.testing.assert_close(engine_state[key].float(), value.float(), rtol=1e-4,
                                   atol=1e-5, msg=lambda text: f"{key}: {text}")


def assert_history_matches(history, rows):
    assert len(history) == len(rows)
    for epoch, (ours, theirs) in enumerate(zip(history, rows), 1):
        for key, value in theirs.items():
            assert float(ours[key]) == pytest.approx(value, rel=1e-4, abs=1e-6), (epoch, key)


# --- 1. the engine's runs against the README's recipe written by hand ---------------------------

def by_epoch(batches):
    """[(training batches, BatchNorm batches)] per epoch, from the batches in the order the
    network saw them: each epoch's steps, then one pass of the same loader (96 < 2,048
    images) to re-estimate BatchNorm."""
    assert len(batches) == EPOCHS * 2 * STEPS
    return [(batches[start:start + STEPS], batches[start + STEPS:start + 2 * STEPS])
            for start in range(0, len(batches), 2 * STEPS)]


def test_part_a_run_is_the_readme_recipe_retrained_by_hand(scratch_run):
    # Per epoch: its training steps, then one pass of the same loader to re-estimate
    # BatchNorm (96 images < 2,048). Nothing else is cropped and flipped: not val, not test.
    epochs = by_epoch(scratch_run.calls)
    images, labels = as_tensors(train=True)
    label_of = dict(zip(image_keys(images), labels.tolist()))
    split = sorted(image_keys(training_split(scratch_run)))
    for passes in epochs:
        for calls in passes:  # each takes every image of the split once, with its own label
            assert sorted(key for inputs, _, _ in calls for key in image_keys(inputs)) == split
            assert all([label_of[key] for key in image_keys(inputs)] == targets.tolist()
                       for inputs, _, targets in calls)
            assert all(reference.is_crop_and_flip(inputs, outputs).all()
                       for inputs, outputs, _ in calls)
    assert any(not torch.equal(inputs, outputs) for inputs, outputs, _ in scratch_run.calls)

    config = read_json(scratch_run.run / "config.json")
    torch.manual_seed(0)  # --seed 0 initialises the network
    model = build_model(config["model"])
    augmented = [[[(outputs, targets) for _, outputs, targets in calls] for calls in passes]
                 for passes in epochs]
    rows = reference.train(model, training_split(scratch_run), augmented, reference.SCRATCH,
                           BATCH, as_tensors(train=False))

    assert_history_matches(read_csv(scratch_run.run / "history.csv"), rows)
    saved = torch.load(scratch_run.run / "checkpoint.pt", weights_only=True)
    assert_same_state(saved["model"], model.state_dict())


def training_images_in_order(inputs, config):
    """Which training images, in which order, a batch the network saw holds: its inputs
    un-normalised with config.json's statistics, looked up among the training images."""
    mean, std = (torch.tensor(config["normalization"][key]).view(1, 3, 1, 1)
                 for key in ("mean", "std"))
    pixels = ((inputs.float() * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
    torch.testing.assert_close((pixels.float() / 255 - mean) / std, inputs.float())  # exact
    where = {key: index for index, key in enumerate(image_keys(as_tensors(train=True)[0]))}
    return torch.tensor([where[key] for key in image_keys(pixels)])


def test_part_b_run_is_the_readme_recipe_retrained_by_hand(transfer_run):
    images, labels = as_tensors(train=True)
    config = read_json(transfer_run.run / "config.json")
    orders = [training_images_in_order(inputs, config) for inputs in transfer_run.calls]
    epochs = by_epoch([(images[order], labels[order]) for order in orders])
    split = torch.cat(orders[:STEPS])
    assert len(set(split.tolist())) == len(split) == STEPS * BATCH  # each image once an epoch
    torch.manual_seed(0)  # --seed 0 initialises the network
    model = build_model(config["model"])
    rows = reference.train(model, images[split], epochs, reference.TRANSFER, BATCH,
                           as_tensors(train=False))

    assert_history_matches(read_csv(transfer_run.run / "history.csv"), rows)
    saved = torch.load(transfer_run.run / "checkpoint.pt", weights_only=True)
    assert_same_state(saved["model"], model.state_dict())


# --- 2. each number against a computation of its own --------------------------------------------

def test_normalisation_is_the_training_splits_own_channel_statistics(scratch_run):
    config = read_json(scratch_run.run / "config.json")
    split = training_split(scratch_run)
    assert len(set(image_keys(split))) == STEPS * BATCH  # the 96 left by the validation split
    mean, std = reference.channel_statistics(split)
    assert config["normalization"]["mean"] == pytest.approx(mean.tolist(), abs=1e-9)
    assert config["normalization"]["std"] == pytest.approx(std.tolist(), abs=1e-9)
    # The test set's statistics and those of the whole training set (validation images
    # included) are another answer, so the comparison above tells them apart.
    for images in (as_tensors(train=False)[0], as_tensors(train=True)[0]):
        other_mean, _ = reference.channel_statistics(images)
        assert (other_mean - mean).abs().max() > 1e-4


def test_test_and_validation_metrics_are_of_the_unaugmented_images(scratch_run):
    """Evaluation sees each image as it is: the saved network, given the plain test and
    validation images, must reproduce metrics.json's losses and accuracies."""
    metrics = read_json(scratch_run.run / "metrics.json")
    images, labels = as_tensors(train=True)
    trained_on = set(image_keys(training_split(scratch_run)))
    held_out = torch.tensor([key not in trained_on for key in image_keys(images)])
    assert held_out.sum() == VAL_SIZE
    for split, (split_images, split_labels) in [("test", as_tensors(train=False)),
                                                ("val", (images[held_out], labels[held_out]))]:
        logits = logits_of(scratch_run.run, split_images)
        assert metrics[f"{split}_loss"] == pytest.approx(
            F.cross_entropy(logits, split_labels).item(), rel=1e-5), split
        assert metrics[f"{split}_accuracy"] == pytest.approx(
            (logits.argmax(1) == split_labels).double().mean().item()), split


def test_per_class_csv_counts_each_true_class_and_its_correct_predictions(scratch_run):
    images, labels = as_tensors(train=False)
    predicted = logits_of(scratch_run.run, images).argmax(1)
    true_counts = torch.bincount(labels, minlength=len(CLASSES))
    # Classes confused unevenly: counting by predicted class would give other numbers.
    assert not torch.equal(torch.bincount(predicted, minlength=len(CLASSES)), true_counts)
    rows = read_csv(scratch_run.run / "per_class.csv")
    assert [row["class"] for row in rows] == CLASSES
    for index, row in enumerate(rows):
        correct = int(((predicted == index) & (labels == index)).sum())
        assert (int(row["images"]), int(row["correct"])) == (int(true_counts[index]), correct)
        assert float(row["accuracy"]) == pytest.approx(correct / int(true_counts[index]),
                                                       abs=1e-4)


def test_schedule_starts_at_a_tenth_of_the_peak_and_peaks_after_15_percent_of_the_steps():
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=2.0)
    scheduler = make_scheduler(optimizer, 100)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.2)
    assert lrs[14] == pytest.approx(2.0)  # the 15th of 100 steps: warm-up done
    assert all(a < b for a, b in zip(lrs[:14], lrs[1:15]))  # rising until then
    assert all(a > b for a, b in zip(lrs[14:], lrs[15:]))  # falling after
    assert lrs[-1] < 2.0 * 1e-3  # to ~0


def test_part_b_summary_test_minus_report_is_ours_less_the_reports(transfer_run, tmp_path):
    """The tiny run is not the report's (a few images and epochs): its cell says why. The same
    run folder with a config of the report's run (45,000 images, 30 epochs, 32x32) is set
    beside it: ours minus the report's."""
    row = {row["config"]: row for row in read_csv(transfer_run.study / "summary.csv")}["scratch"]
    assert float(row["report_test"]) == REPORT_SCRATCH_TRANSFER_TEST
    assert row["test_minus_report"] == "" and "epochs" in row["test_minus_report_why"]
    study = tmp_path / "transfer"
    shutil.copytree(transfer_run.run, study / "scratch" / "seed0")
    config, metrics = (read_json(study / "scratch" / "seed0" / name)
                       for name in ("config.json", "metrics.json"))
    config["sizes"]["train"], config["args"]["epochs"], metrics["epochs"] = 45000, 30, 30
    for name, data in (("config.json", config), ("metrics.json", metrics)):
        (study / "scratch" / "seed0" / name).write_text(json.dumps(data))
    write_study("transfer", study)
    row = {row["config"]: row for row in read_csv(study / "summary.csv")}["scratch"]
    difference = metrics["test_accuracy"] - REPORT_SCRATCH_TRANSFER_TEST
    assert difference != 0
    assert float(row["test_minus_report"]) == pytest.approx(difference)


class ChannelGradientNet(nn.Module):
    """A conv layer (the Grad-CAM layer) read by a linear head with a weight per position, so
    each class's gradient varies within a channel and the channel maps sum to either sign."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.features = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def test_grad_cam_is_relu_of_the_channel_maps_weighted_by_their_mean_gradient():
    torch.manual_seed(4)
    net = ChannelGradientNet()
    maps = net.features(torch.randn(1, 3, 6, 6))
    logits = net.head(maps.flatten(1))
    for class_index in range(3):
        gradient, = torch.autograd.grad(logits[0, class_index], maps, retain_graph=True)
        assert gradient[0].flatten(1).std(dim=1).min() > 0  # varies within each channel
        weights = gradient[0].mean(dim=(1, 2))  # Selvaraju et al.: global-average-pooled
        weighted = (weights[:, None, None] * maps[0]).sum(dim=0).detach()
        assert weighted.min() < 0 < weighted.max()  # the ReLU has something to remove
        expected = weighted.clamp(min=0) / weighted.max()
        # Without the average, or without the ReLU, the map would be another one.
        elementwise = (gradient[0] * maps[0]).sum(dim=0).detach().clamp(min=0)
        assert (elementwise / elementwise.max() - expected).abs().max() > 0.05
        cam = activations.grad_cam(logits, maps, class_index)
        torch.testing.assert_close(cam, expected)


def first_batch_images(flags, out):
    """The images of a part (a) run's first training batch, taken as crop + flip gets them
    (the run is stopped there, before anything is written)."""
    calls = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CropFlip, "__call__", recording_crop_flip(calls, stop_after=1))
        with pytest.raises(SeenEnough):
            run_main(train_scratch, *flags, "--out", out)
    return sorted(image_keys(calls[0][0]))


def test_the_subset_is_drawn_from_the_seed(fake_cifar10, tmp_path):
    # No validation split, and the whole subset in the first batch: the subset alone decides.
    flags = [*SCRATCH, "--val-size", "0", "--subset", "8", "--batch-size", "8"]
    seed0 = first_batch_images([*flags, "--seed", "0"], tmp_path / "a")
    assert first_batch_images([*flags, "--seed", "0"], tmp_path / "b") == seed0
    assert first_batch_images([*flags, "--seed", "1"], tmp_path / "c") != seed0


# --- runs that must not reuse what another setting made ----------------------------------------

def linked_copy(study, destination):
    """A copy of a finished study whose files are hard links: the engine replaces files
    (os.replace), so a changed file leaves the original alone."""
    shutil.copytree(study, destination, copy_function=os.link)
    return destination


def files_of(folder):
    return {path: path.read_bytes() for path in sorted(Path(folder).rglob("*")) if path.is_file()}


# Each part (a) setting that changes what a run computes, and what the refusal must name:
# the flag, or the model it changes.
RECIPE_CHANGES = [(["--epochs", "3"], "--epochs"), (["--batch-size", "12"], "--batch-size"),
                  (["--lr", "0.01"], "--lr"), (["--weight-decay", "0.001"], "--weight-decay"),
                  (["--label-smoothing", "0.2"], "--label-smoothing"),
                  (["--subset", "48"], "--subset"), (["--val-size", "12"], "--val-size"),
                  (["--width", "4"], "model"), (["--dropout", "0.1"], "model")]


@pytest.mark.parametrize("change, message", RECIPE_CHANGES,
                         ids=[change[0] for change, _ in RECIPE_CHANGES])
def test_a_finished_run_is_not_reused_under_another_recipe(scratch_run, fake_cifar10, tmp_path,
                                                           capsys, change, message):
    study = linked_copy(scratch_run.study, tmp_path / "study")
    before = files_of(study)
    with pytest.raises(SystemExit) as stopped:
        run_main(train_scratch, *SCRATCH, *change, "--out", study)
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and error.startswith("error: ") and message in error, error
    assert files_of(study) == before


TRANSFER_CHANGES = [(["--backbone-lr-mult", "0.5"], "--backbone-lr-mult"),
                    (["--image-size", "64"], "--image-size"),
                    (["--augment", "crop-flip"], "--augment"),
                    (["--weight-decay", "0.001"], "--weight-decay")]


@pytest.mark.parametrize("change, message", TRANSFER_CHANGES,
                         ids=[change[0] for change, _ in TRANSFER_CHANGES])
def test_a_finished_transfer_run_is_not_reused_under_another_recipe(
        transfer_run, fake_cifar10, tmp_path, capsys, change, message):
    study = linked_copy(transfer_run.study, tmp_path / "study")
    before = files_of(study)
    with pytest.raises(SystemExit) as stopped:
        run_main(train_transfer, *TRANSFER, *change, "--out", study)
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and error.startswith("error: ") and message in error, error
    assert files_of(study) == before


def test_settings_that_leave_the_numbers_alone_reuse_the_finished_run(scratch_run, fake_cifar10,
                                                                       tmp_path):
    """The other side of the rule: where and how a run is computed or shown is no reason
    to retrain it (a retrained run would write other timings into history.csv)."""
    study = linked_copy(scratch_run.study, tmp_path / "study")
    run = study / "cifar10" / "seed0"
    before = files_of(run)
    run_main(train_scratch, *SCRATCH, "--device", "cpu", "--precision", "fp32", "--log-every",
             "5", "--data-dir", tmp_path / "elsewhere", "--out", study)
    assert files_of(run) == before
