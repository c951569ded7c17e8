"""visualize_activations.py and engine/activations.py: capture order and shapes for both model
families, layer statistics and Grad-CAM on constructed models whose answers are known, every
output file of the script, and each bad input answered with one line and exit status 2.
"""
import csv
import io
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from PIL import Image

import train_scratch
import visualize_activations
from conftest import QUICK, run_script, use_stand_in_imagenet, write_image_tree
from engine import activations
from engine.activations import LayerCapture
from engine.errors import UserError
from engine.loader import IMAGENET_STATS
from models import build_model
from models.transfer import build_transfer_model

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real (one short epoch) run directory of train_scratch.py, trained in this process
    to spare the tests a second interpreter start."""
    study = tmp_path_factory.mktemp("scratch") / "study"
    args = train_scratch.get_args_parser().parse_args(
        [*QUICK, "--epochs", "1", "--subset", "128", "--val-size", "64", "--out", str(study)])
    train_scratch.main(args)
    return study / "synthetic" / "seed0"


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A non-square photograph-like PNG (the script must resize and centre-crop it)."""
    generator = np.random.default_rng(0)
    pixels = generator.integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    pixels[10:30, 20:45] = (230, 40, 40)
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(pixels).save(path)
    return path


def leaf_module_outputs(model, inputs):
    """(name, output) of every leaf module in call order, by forward hooks: an independent
    witness of the order and values the fx capture reports."""
    calls = []
    hooks = [module.register_forward_hook(
        lambda module, args, output, name=name: calls.append((name, output.detach().clone())))
        for name, module in model.named_modules()
        # an empty Sequential is the identity shortcut, not a layer
        if not list(module.children()) and not isinstance(module, nn.Sequential)]
    with torch.no_grad():
        model(inputs)
    for hook in hooks:
        hook.remove()
    return calls


def check_capture_against_hooks(model, side):
    model.eval()
    inputs = torch.randn(1, 3, side, side)
    witnessed = leaf_module_outputs(model, inputs)  # before capture changes in-place modules
    capture = LayerCapture(model)
    with torch.no_grad():
        logits, outputs = capture.run(inputs)
        expected_logits = model(inputs)
    assert list(outputs) == capture.names  # forward order, every layer once
    assert capture.names[0] == "input" and torch.equal(outputs["input"], inputs)
    assert torch.allclose(logits, expected_logits)
    # Leaf modules appear in the capture in the order the hooks saw them, with their values.
    module_layers = [name for name in capture.names if name in dict(model.named_modules())]
    hook_names = []
    for name, _ in witnessed:
        if name not in hook_names:  # torchvision calls one ReLU module twice per block
            hook_names.append(name)
    assert module_layers == hook_names
    for name, output in witnessed:
        if name in outputs and not name.endswith("relu"):
            assert torch.allclose(outputs[name], output, atol=1e-6), name
    return capture, outputs


def shape(outputs, name):
    return tuple(outputs[name].shape[1:])


def test_capture_handwritten_resnet_in_forward_order_with_functional_relus():
    model = build_model({"name": "resnet18_cifar", "num_classes": 10, "width": 8})
    capture, outputs = check_capture_against_hooks(model, 32)
    assert capture.names[:7] == ["input", "conv1", "bn1", "relu", "layer1.0.conv1",
                                 "layer1.0.bn1", "layer1.0.relu"]
    # The report's "first ReLU in the first block" is an F.relu call, not a module: captured.
    assert torch.equal(outputs["layer1.0.relu"], F.relu(outputs["layer1.0.bn1"]))
    assert torch.equal(outputs["layer1.0.relu_1"], F.relu(outputs["layer1.0.add"]))
    stages = {"layer1": (8, 32, 32), "layer2": (16, 16, 16), "layer3": (32, 8, 8),
              "layer4": (64, 4, 4)}
    for stage, expected in stages.items():
        layer = capture.layer(stage)  # a stage's name is its output
        assert layer.name == f"{stage}.1.relu_1" and stage in layer.aliases
        assert shape(outputs, layer.name) == expected
    assert capture.layer("layer2.0").name == "layer2.0.relu_1"
    assert shape(outputs, "layer2.0.shortcut.0") == (16, 16, 16)
    # Then a global average pool (however it is written) and the classifier.
    assert capture.names[-1] == "linear" and shape(outputs, "linear") == (10,)
    assert shape(outputs, capture.names[-2]) == (64,)


def test_capture_torchvision_resnet_keeps_outputs_that_inplace_relus_would_overwrite():
    model = build_transfer_model(num_classes=10)
    assert model.relu.inplace  # torchvision's choice, which capture must undo
    capture, outputs = check_capture_against_hooks(model, 64)
    assert capture.names[:5] == ["input", "conv1", "bn1", "relu", "maxpool"]
    assert outputs["bn1"].min() < 0 and outputs["layer1.0.bn1"].min() < 0  # not ReLU'd later
    assert torch.equal(outputs["layer1.0.relu"], F.relu(outputs["layer1.0.bn1"]))
    expected = {"conv1": (64, 32, 32), "maxpool": (64, 16, 16), "layer1": (64, 16, 16),
                "layer2": (128, 8, 8), "layer3": (256, 4, 4), "layer4": (512, 2, 2),
                "flatten": (512,), "fc": (10,)}
    for name, size in expected.items():
        assert shape(outputs, capture.layer(name).name) == size, name
    assert "layer2.0.downsample.0" in capture.names


def test_layers_resolve_aliases_in_forward_order_and_list_the_valid_names():
    capture = LayerCapture(build_model({"name": "resnet18_cifar", "width": 8}))
    chosen = capture.resolve(["layer4", "relu", "layer1.0", "relu"])
    assert [layer.name for layer in chosen] == ["relu", "layer1.0.relu_1", "layer4.1.relu_1"]
    with pytest.raises(activations.UserError) as error:
        capture.layer("layer1.0.rleu")
    message = str(error.value)
    assert "'layer1.0.relu'" in message and "input, conv1, bn1" in message
    assert "more" in message and "--list-layers" in message and "\n" not in message


class DeadChannelNet(nn.Module):
    """1x1 conv whose channels 2 and 3 can never be positive for an image in [0, 1]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 1.0     # red, +0.1: always positive
            self.conv.weight[1, 1] = 1.0     # green, +0.1: always positive
            self.conv.weight[2:] = -1.0      # minus everything, -0.1: always negative
            self.conv.bias.copy_(torch.tensor([0.1, 0.1, -0.1, -0.1]))
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).mean(dim=(2, 3)))


def test_stats_count_dead_channels_and_zeros_on_a_constructed_layer():
    image = torch.rand(1, 3, 6, 5)
    capture = LayerCapture(DeadChannelNet())
    _, outputs = capture.run(image)
    rows = {row["layer"]: row for row in activations.stats_rows(capture.layers, outputs)}
    relu = rows["relu"]
    expected = torch.cat([image[0, :2] + 0.1, torch.zeros(2, 6, 5)])
    assert relu["shape"] == "4x6x5" and relu["channels"] == 4
    assert relu["dead_channels"] == 2 and relu["fraction_zero"] == pytest.approx(0.5)
    assert relu["mean"] == pytest.approx(expected.mean().item(), rel=1e-5)
    assert relu["std"] == pytest.approx(expected.std(correction=0).item(), rel=1e-5)
    assert relu["min"] == 0 and relu["max"] == pytest.approx(expected.max().item())
    assert rows["conv"]["dead_channels"] == 0 and rows["conv"]["fraction_zero"] == 0
    assert rows["mean"]["shape"] == "4" and rows["mean"]["dead_channels"] == 2  # a vector
    text = activations.stats_csv_text(list(rows.values()))
    assert text.splitlines()[0] == ",".join(activations.STATS_COLUMNS)


class ColourRegionNet(nn.Module):
    """Class 0 is decided by red, class 1 by green: where each colour is, is where each
    class's evidence is."""

    def __init__(self):
        super().__init__()
        self.detect = nn.Conv2d(3, 2, 1, bias=False)
        with torch.no_grad():
            red_minus_rest, green_minus_rest = [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0]
            self.detect.weight.copy_(torch.tensor([red_minus_rest, green_minus_rest])[..., None, None])
        self.head = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(2))

    def forward(self, x):
        features = F.relu(self.detect(x))
        return self.head(features.mean(dim=(2, 3)))


def test_gradcam_peaks_where_the_class_evidence_is():
    image = torch.zeros(1, 3, 16, 16)
    image[0, 0, 2:6, 1:5] = 1.0        # red square, top left: evidence for class 0
    image[0, 1, 10:15, 9:14] = 0.8     # green square, bottom right: evidence for class 1
    capture = LayerCapture(ColourRegionNet())
    logits, outputs = capture.run(image.requires_grad_(True))
    layer = capture.layer("relu")
    for class_index, (rows, columns) in enumerate([(range(2, 6), range(1, 5)),
                                                  (range(10, 15), range(9, 14))]):
        cam = activations.grad_cam(logits, outputs[layer.name], class_index)
        assert cam.shape == (16, 16) and cam.max() == 1.0
        row, column = divmod(int(cam.argmax()), 16)
        assert row in rows and column in columns
        outside = torch.ones(16, 16, dtype=torch.bool)
        outside[rows.start:rows.stop, columns.start:columns.stop] = False
        assert cam[outside].max() == 0  # nothing else speaks for the class


def test_gradcam_refuses_a_layer_without_maps():
    capture = LayerCapture(ColourRegionNet())
    logits, outputs = capture.run(torch.rand(1, 3, 4, 4, requires_grad=True))
    with pytest.raises(activations.UserError, match="spatial"):
        activations.grad_cam(logits, outputs["head"], 0)


def test_dataset_image_defaults_to_the_first_test_car(tmp_path):
    root = write_image_tree(tmp_path / "tree", classes=("airplane", "automobile", "bird"),
                            per_class=(2, 3))
    subject = activations.Subject(model=None, classes=["airplane", "automobile", "bird"],
                                  mean=(0.5,) * 3, std=(0.25,) * 3, stored_size=32, input_size=32,
                                  label="run", description="run",
                                  config={"dataset": "folder", "args": {"data_dir": str(root)}})
    picture = activations.dataset_picture(subject)
    assert picture.true_class == "automobile" and picture.label == "test3_automobile"
    assert picture.pixels.shape == (3, 32, 32) and picture.pixels.dtype == torch.uint8
    assert activations.dataset_picture(subject, index=2, class_wanted="bird").label == "test8_bird"
    assert activations.dataset_picture(subject, index=1).label == "test1_airplane"


def test_bare_scratch_model_takes_width_and_classes_from_its_weights_file(tmp_path):
    trained = build_model({"name": "resnet18_cifar", "num_classes": 7, "width": 8})
    torch.save(trained.state_dict(), tmp_path / "weights.pt")
    subject = activations.build_bare("scratch", tmp_path / "weights.pt")
    assert subject.classes == [f"class{index}" for index in range(7)]
    assert torch.equal(subject.model.conv1.weight, trained.conv1.weight)
    assert subject.input_size == 32 and not subject.warnings


@pytest.fixture
def offline_torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME and a downloader that fails like a machine without network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def offline(*args, **kwargs):
        raise OSError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch_home"


def test_bare_imagenet_model_keeps_its_1000_class_head(offline_torch_home, monkeypatch):
    pretrained = torchvision.models.resnet18(weights=None)
    buffer = io.BytesIO()
    torch.save(pretrained.state_dict(), buffer)
    cached = use_stand_in_imagenet(monkeypatch, buffer.getvalue())
    assert cached.parent == offline_torch_home / "hub" / "checkpoints"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(buffer.getvalue())
    subject = activations.build_bare("transfer", "imagenet")
    assert subject.classes == torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    assert len(subject.classes) == 1000 and not subject.warnings
    assert torch.equal(subject.model.fc.weight, pretrained.fc.weight)
    assert (subject.mean, subject.std) == IMAGENET_STATS and subject.input_size == 224
    with pytest.raises(UserError, match="--num-classes"):
        activations.build_bare("transfer", "imagenet", num_classes=10)


def test_transfer_run_rebuilds_offline_from_its_checkpoint(offline_torch_home, tmp_path):
    """A run trained from ImageNet weights with frozen children needs neither the ImageNet
    file nor the freezing to be rebuilt: every weight is in its checkpoint."""
    spec = {"name": "torchvision_resnet18", "num_classes": 3, "weights": "imagenet",
            "head": "mlp", "freeze_children": 7, "cifar_stem": False}
    trained = build_transfer_model(3, head="mlp")
    config = {"model": spec, "classes": ["a", "b", "c"], "dataset": "folder",
              "normalization": {"mean": list(IMAGENET_STATS[0]), "std": list(IMAGENET_STATS[1])},
              "stored_image_size": 32, "image_size": 64, "eval_augment": "None",
              "args": {"data_dir": "nowhere"}}
    run = tmp_path / "transfer_run"
    run.mkdir()
    torch.save({"model": trained.state_dict(), "config": config}, run / "checkpoint.pt")
    subject = activations.load_run(run)
    assert torch.equal(subject.model.fc[0].weight, trained.fc[0].weight)
    assert (subject.stored_size, subject.input_size) == (32, 64)
    assert subject.normalizer()(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)).shape[-1] == 64



def test_a_checkpoint_that_does_not_fit_its_config_is_refused_in_one_line(tmp_path):
    spec = {"name": "resnet18_cifar", "num_classes": 3, "width": 8}
    config = {"model": spec, "classes": ["a", "b", "c"], "dataset": "folder",
              "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
              "stored_image_size": 32, "image_size": 32, "args": {}}
    run = tmp_path / "run"
    run.mkdir()
    wider = build_model({**spec, "width": 16}).state_dict()
    torch.save({"model": wider, "config": config}, run / "checkpoint.pt")
    with pytest.raises(UserError) as raised:
        activations.load_run(run)
    message = str(raised.value)
    assert "does not fit the model its config names (resnet18_cifar)" in message
    assert "shapes differ for conv1.weight (16, 3, 3, 3) in the file" in message
    assert "train the run again" in message and "\n" not in message


# --- the script ---------------------------------------------------------------------------

def layer_count(spec):
    """How many layers the script should draw for a model: every node, input included."""
    return len(LayerCapture(build_model(spec)).layers)


def read_stats(out):
    with open(out / "stats.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def assert_outputs(out, layer_count, cams):
    layer_files = sorted(path.name for path in (out / "layers").iterdir())
    assert len(layer_files) == layer_count and layer_files[0] == "000_input.png"
    for path in [*(out / "layers").iterdir(), out / "overview.png", out / "gradcam.png"]:
        assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    rows = read_stats(out)
    indices = [int(row["index"]) for row in rows]
    assert len(rows) == layer_count and indices == sorted(set(indices))  # forward order
    assert [f"{int(row['index']):03d}_{row['layer']}.png" for row in rows] == layer_files
    predictions = json.loads((out / "predictions.json").read_text())
    probabilities = [entry["probability"] for entry in predictions["top5"]]
    assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1 + 1e-6
    assert len(predictions["gradcam_classes"]) == cams
    assert not [path for path in out.rglob("*.tmp")]  # atomic writes leave no temporaries
    return rows, predictions


def test_script_writes_every_output_for_a_run_directory(run_dir, tmp_path):
    out = tmp_path / "vis"
    result = run_script("visualize_activations.py", "--run", run_dir, "--out", out,
                        "--target-class", "class3", timeout=300)
    config = json.loads((run_dir / "config.json").read_text())
    rows, predictions = assert_outputs(out, layer_count(config["model"]), cams=2)
    assert [int(row["index"]) for row in rows] == list(range(len(rows)))  # every layer
    assert "predicted" in result.stdout and str(out) in result.stdout
    # The synthetic dataset has no "automobile": the default is its first test image.
    assert predictions["true_class"] is not None and "test image 0" in predictions["image"]
    assert predictions["gradcam_layer"] == "layer4.1.relu_1"
    assert predictions["gradcam_classes"][1] == "class3"
    assert {row["layer"]: row["shape"] for row in rows}["layer1.0.relu"] == "8x32x32"


def test_script_writes_every_output_for_a_bare_transfer_model_and_a_photo(photo, tmp_path):
    out = tmp_path / "vis"
    result = run_script("visualize_activations.py", "--model", "transfer", "--weights", "none",
                        "--image", photo, "--image-size", "64", "--out", out,
                        "--layers", "input", "maxpool", "layer1.0.relu", "layer4", "fc",
                        timeout=300)
    rows, predictions = assert_outputs(out, 5, cams=1)
    assert "warning: --weights none" in result.stderr
    assert [(row["layer"], row["shape"]) for row in rows] == [
        ("input", "3x64x64"), ("maxpool", "64x16x16"), ("layer1.0.relu", "64x16x16"),
        ("layer4.1.relu_1", "512x2x2"), ("fc", "10")]
    assert predictions["image"] == str(photo)


def test_chosen_layers_and_list_layers(run_dir, tmp_path, capsys):
    parser = visualize_activations.get_args_parser()
    visualize_activations.main(parser.parse_args(["--run", str(run_dir), "--list-layers"]))
    listing = capsys.readouterr().out.splitlines()
    config = json.loads((run_dir / "config.json").read_text())
    assert len(listing) == 1 + layer_count(config["model"])
    assert listing[1].split()[:3] == ["0", "input", "input"]
    assert listing[18].split() == ["17", "layer1.1.relu_1", "relu", "8x32x32", "layer1.1,",
                                   "layer1"]
    out = tmp_path / "vis"
    findings = visualize_activations.main(parser.parse_args(
        ["--run", str(run_dir), "--out", str(out), "--layers", "relu", "layer1", "linear",
         "--cam-layer", "layer3", "--index", "4"]))
    last = layer_count(config["model"]) - 1
    assert sorted(path.name for path in (out / "layers").iterdir()) == [
        "003_relu.png", "017_layer1.1.relu_1.png", f"{last:03d}_linear.png"]
    assert [layer.name for layer in findings.overview] == ["relu", "layer1.1.relu_1", "linear"]
    assert findings.cams[0][2].shape == (8, 8)
    # A second run into the same folder is refused unless --overwrite.
    again = parser.parse_args(["--run", str(run_dir), "--out", str(out), "--layers", "conv1"])
    with pytest.raises(SystemExit):
        visualize_activations.main(again)
    assert "--overwrite" in capsys.readouterr().err
    again.overwrite = True
    visualize_activations.main(again)
    assert [path.name for path in (out / "layers").iterdir()] == ["001_conv1.png"]


# --- bad input ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def foreign_run(run_dir, tmp_path_factory):
    """A run directory whose checkpoint names a model this repository does not have."""
    folder = tmp_path_factory.mktemp("foreign")
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    saved["config"]["model"] = {"name": "vgg11", "num_classes": 10}
    torch.save(saved, folder / "checkpoint.pt")
    return folder


def bad_inputs(run_dir, foreign_run, photo, tmp_path):
    garbage = tmp_path / "broken.png"
    garbage.write_bytes(b"not an image at all")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    return {
        "unreadable image": (["--run", run_dir, "--image", garbage], "cannot read image"),
        "no checkpoint": (["--run", empty], "no checkpoint"),
        "a study folder": (["--run", run_dir.parent.parent], "--run " + str(run_dir)),
        "unknown layer": (["--run", run_dir, "--layers", "relu", "layer9"], "unknown layer"),
        "unknown model": (["--run", foreign_run], "vgg11"),
        "unknown class": (["--run", run_dir, "--target-class", "dog"], "unknown class"),
        "image index": (["--run", run_dir, "--index", "100000"], "out of range"),
        "bare without image": (["--model", "scratch", "--weights", "none"], "--image"),
        "scratch imagenet": (["--model", "scratch", "--weights", "imagenet", "--image", photo],
                             "no ImageNet weights"),
    }


BAD = ["unreadable image", "no checkpoint", "a study folder", "unknown layer", "unknown model", "unknown class",
       "image index", "bare without image", "scratch imagenet"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, run_dir, foreign_run, photo,
                                                         tmp_path, capsys):
    flags, expected = bad_inputs(run_dir, foreign_run, photo, tmp_path)[case]
    out = tmp_path / "vis"
    args = visualize_activations.get_args_parser().parse_args([*map(str, flags), "--out", str(out)])
    with pytest.raises(SystemExit) as stop:
        visualize_activations.main(args)
    error = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2
    assert len(error) == 1 and error[0].startswith("error: ") and expected in error[0]
    assert not out.exists()
