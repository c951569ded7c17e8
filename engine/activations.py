"""Part (d): what a network computes for one image, layer by layer, and where it looks.

The report showed the channels of a few layers of its transfer-learned network for one car
image. This module does that for any model of this repository (rebuilt from a run directory,
or built bare) and adds what a user looks at next: per-layer statistics (how many channels
are dead for this image) and Grad-CAM (Selvaraju et al. 2017: which region the prediction
rests on).

How the layers are captured, and why torch.fx
---------------------------------------------
Forward hooks only see modules. The hand-written ResNet (models/resnet.py) applies its ReLUs
and the residual sum as functions (F.relu, +), so hooks would miss "the first ReLU in the
first block" that the report shows, unless we re-derived it from bn1's output with knowledge
of each architecture. Instead the model is traced symbolically (torch.fx) and run node by
node through an fx.Interpreter that keeps every node's output: every op in forward order,
functional ones included, for both model families, with no per-architecture code.

Names are torchvision's feature-extraction names (torchvision.models.feature_extraction,
whose NodePathTracer does the tracing): the module path for a module ("layer1.0.conv1"), the
enclosing module's path plus the function for an op ("layer1.0.relu", "layer1.0.add"), and
"_1", "_2"... for repeats within one module ("layer1.0.relu_1" is the second ReLU of that
block, i.e. the block's output). They depend only on the model's code, so they are stable,
and they are the names create_feature_extractor accepts. The image itself is "input". A
module's path ("layer1.0" for a block, "layer1" for a stage) names the last node inside it,
i.e. its output, as in create_feature_extractor.

Every module without children (conv, BN, ReLU, pool, linear, dropout, and subclasses such as
models.transfer.EvalModeBatchNorm2d) is one node; containers are traced through.
"""
import csv
import difflib
import io
import math
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from matplotlib import font_manager
from PIL import Image, ImageDraw, ImageFont
from torchvision.models.feature_extraction import NodePathTracer

from engine import atomic, pretrained
from engine.checkpoint import load_checkpoint
from engine.errors import UserError
from engine.loader import IMAGENET_STATS, Normalizer
from engine.plots import plt, save_figure
from engine.sources import load_source, read_image
from models import build_model

INPUT = "input"
DEFAULT_CAM_LAYER = "layer4"
OVERVIEW_CHANNELS = 8        # channels per layer on overview.png
# The report's sequence (its Part (d)): the image's channels, the stem, the first block's
# ReLU and second conv, then each stage's output. Names a model lacks are skipped.
OVERVIEW_LAYERS = (INPUT, "conv1", "relu", "maxpool", "layer1.0.relu", "layer1.0.conv2",
                   "layer1", "layer2", "layer3", "layer4")
DEFAULT_CLASS = "automobile"  # the report's example image is a car
BARE_MODELS = ("scratch", "transfer")
BARE_INPUT_SIZE = {"scratch": 32, "transfer": 224}  # CIFAR-sized / ImageNet-sized inputs
GAP_COLOUR = "#2d4f8a"       # between the grayscale tiles, so black (dead) maps stay visible


# ---------------------------------------------------------------------------------------
# Capturing every layer's output
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layer:
    name: str          # feature-extraction name ("input" for the image)
    kind: str          # the module's class (Conv2d, ReLU...) or the function (relu, add...)
    index: int         # position in forward order (0 is the input)
    aliases: tuple = ()  # modules whose output this is: ("layer1.1", "layer1")


def _leaf_module_types(model):
    """Classes fx should keep whole: every class of a module without children, containers
    excepted (an empty nn.Sequential, the identity shortcut, must be traced through, or
    every Sequential, stages included, would become one opaque node)."""
    containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    return list({type(module) for module in model.modules()
                 if not any(True for _ in module.children())
                 and not isinstance(module, containers)})


def _disable_inplace(model, graph):
    """Make in-place ops (torchvision's ReLU(inplace=True), F.relu(x, inplace=True)) write
    new tensors.

    In place, the ReLU after bn1 would overwrite the bn1 output we keep, and autograd could
    not take Grad-CAM's gradient through it. It changes memory use only, not any value.
    """
    for module in model.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    for node in graph.nodes:
        if node.op in ("call_function", "call_method") and node.kwargs.get("inplace") is True:
            node.kwargs = {**node.kwargs, "inplace": False}


class _Recorder(fx.Interpreter):
    """Runs a traced model node by node and keeps the output of every named node."""

    def __init__(self, graph_module, names):
        super().__init__(graph_module)
        self.names = names
        self.outputs = {}

    def run_node(self, node):
        result = super().run_node(node)
        name = self.names.get(node)
        if name is not None and isinstance(result, torch.Tensor):
            self.outputs[name] = result
        return result


class LayerCapture:
    """Every intermediate tensor of a model's forward pass, by stable name, in forward order.

    The model is put in eval mode (BatchNorm running statistics, no dropout) and its in-place
    modules are made out of place (see _disable_inplace): it is meant to be a model built
    for visualisation.
    """

    def __init__(self, model):
        model.eval()
        # autowrap_modules as torchvision's own feature extraction (math and torchvision.ops
        # calls stay single nodes).
        tracer = NodePathTracer(autowrap_modules=(math, torchvision.ops),
                                leaf_modules=_leaf_module_types(model))
        try:
            graph = tracer.trace(model)
        except Exception as error:  # fx raises TraceError, TypeError... on dynamic control flow
            raise UserError(f"cannot trace {type(model).__name__} with torch.fx "
                            f"({type(error).__name__}: {str(error).splitlines()[0][:160]}): "
                            f"this tool needs a model without data-dependent control flow"
                            ) from None
        _disable_inplace(model, graph)
        self.model = model
        self.graph_module = fx.GraphModule(model, graph)
        self._names = {}
        for node, qualname in tracer.node_to_qualname.items():
            if node.op != "get_attr":  # parameters and constants are not activations
                self._names[node] = INPUT if node.op == "placeholder" else qualname
        self.layers = self._describe_layers()
        self._by_name = {layer.name: layer for layer in self.layers}
        self._aliases = {alias: layer.name for layer in self.layers for alias in layer.aliases}

    def _kind(self, node):
        if node.op == "placeholder":
            return INPUT
        if node.op == "call_module":
            return type(self.model.get_submodule(node.target)).__name__
        return getattr(node.target, "__name__", str(node.target))

    def _describe_layers(self):
        names = list(self._names.values())
        # A module's output is the last node inside it (create_feature_extractor's rule).
        owner = {}
        for path, module in self.model.named_modules():
            if path and any(True for _ in module.children()):
                inside = [n for n in names if n == path or n.startswith(path + ".")]
                if inside:
                    owner.setdefault(inside[-1], []).append(path)
        layers = []
        for index, (node, name) in enumerate(self._names.items()):
            # Innermost first: "layer1.1" (block) before "layer1" (stage).
            aliases = tuple(sorted(owner.get(name, ()), key=lambda p: -p.count(".")))
            layers.append(Layer(name, self._kind(node), index, aliases))
        return layers

    @property
    def names(self):
        return [layer.name for layer in self.layers]

    def layer(self, name):
        """The layer a name or module path (its output) refers to; UserError if none."""
        name = self._aliases.get(name, name)
        if name not in self._by_name:
            raise UserError(unknown_layer_message(name, self.names + list(self._aliases)))
        return self._by_name[name]

    def knows(self, name):
        return name in self._by_name or name in self._aliases

    def resolve(self, names):
        """Layers for names or module paths, in forward order, each once."""
        chosen = {self.layer(name).name for name in names}
        return [layer for layer in self.layers if layer.name in chosen]

    def run(self, inputs):
        """(logits, {layer name: output}) for a batch; gradients flow (for Grad-CAM)."""
        recorder = _Recorder(self.graph_module, self._names)
        logits = recorder.run(inputs)
        return logits, recorder.outputs

    def shapes(self, input_size):
        """Each layer's output shape (without the batch) for an input of this side."""
        with torch.no_grad():
            _, outputs = self.run(torch.zeros(1, 3, input_size, input_size))
        return {name: tuple(tensor.shape[1:]) for name, tensor in outputs.items()}


def unknown_layer_message(name, valid, shown=12):
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    listed = ", ".join(valid[:shown])
    more = f" and {len(valid) - shown} more" if len(valid) > shown else ""
    return (f"unknown layer {name!r}{hint}: valid names are {listed}{more}; "
            f"run with --list-layers to see them all")


def layer_table(capture, input_size):
    """The --list-layers text: index, name, kind, output shape, and which modules end there."""
    shapes = capture.shapes(input_size)
    width = max(len(layer.name) for layer in capture.layers)
    kind_width = max(len(layer.kind) for layer in capture.layers)
    lines = [f"{'#':>3}  {'name':<{width}}  {'kind':<{kind_width}}  {'shape':<12}  output of"]
    for layer in capture.layers:
        shape = "x".join(map(str, shapes.get(layer.name, ())))
        lines.append(f"{layer.index:>3}  {layer.name:<{width}}  {layer.kind:<{kind_width}}  "
                     f"{shape:<12}  {', '.join(layer.aliases)}".rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------

STATS_COLUMNS = ("index", "layer", "kind", "shape", "channels", "mean", "std", "min", "max",
                 "fraction_zero", "dead_channels", "output_of")


def layer_stats(tensor):
    """Statistics of one image's activation (1, C, ...): a dead channel is all zero here.

    For a vector (1, C) each feature counts as a channel.
    """
    values = tensor.detach()[0].float()
    per_channel = values.reshape(values.shape[0], -1)
    return {
        "shape": "x".join(map(str, values.shape)),
        "channels": per_channel.shape[0],
        "mean": values.mean().item(),
        "std": values.std(correction=0).item(),  # of this image's values, not an estimate
        "min": values.min().item(),
        "max": values.max().item(),
        "fraction_zero": (values == 0).float().mean().item(),
        "dead_channels": int((per_channel == 0).all(dim=1).sum().item()),
    }


def stats_rows(layers, outputs):
    return [{"index": layer.index, "layer": layer.name, "kind": layer.kind,
             **layer_stats(outputs[layer.name]), "output_of": " ".join(layer.aliases)}
            for layer in layers]


def stats_csv_text(rows):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=STATS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: (f"{value:.6g}" if isinstance(value, float) else value)
                         for key, value in row.items()})
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------
# Grad-CAM and predictions
# ---------------------------------------------------------------------------------------

def grad_cam(logits, activation, class_index):
    """Grad-CAM of one class on one layer's output (1, C, H, W): an (H, W) map in [0, 1].

    Each channel is weighted by the spatial mean of the class score's gradient with respect
    to it, the weighted sum is rectified (only evidence for the class), then scaled by its
    maximum. The score is the logit, not the probability, as in the paper: the softmax would
    mix in every other class. All zero means no positive evidence in this layer.
    """
    if activation.dim() != 4:
        raise UserError(f"Grad-CAM needs a layer with spatial maps (C x H x W); this one has "
                        f"shape {'x'.join(map(str, activation.shape[1:]))}: choose --cam-layer "
                        f"among the conv, BN, ReLU or block outputs")
    gradient, = torch.autograd.grad(logits[0, class_index], activation, retain_graph=True)
    weights = gradient[0].mean(dim=(1, 2))
    cam = F.relu((weights[:, None, None] * activation[0]).sum(dim=0)).detach()
    peak = cam.max()
    return cam / peak if peak > 0 else cam


def top_predictions(logits, classes, k=5):
    probabilities = logits.detach()[0].float().softmax(dim=0)
    values, indices = probabilities.topk(min(k, len(probabilities)))
    return [{"class": class_name(classes, index), "index": index, "probability": value}
            for value, index in zip(values.tolist(), indices.tolist())]


def class_name(classes, index):
    return classes[index] if index < len(classes) else f"class{index}"


def class_index(value, classes):
    """A class given by name or by index; UserError naming the choices otherwise."""
    if value in classes:
        return classes.index(value)
    if re.fullmatch(r"\d+", value) and int(value) < len(classes):
        return int(value)
    shown = ", ".join(classes[:10])
    if len(classes) > 10:
        shown += f" ... ({len(classes)} classes)"
    raise UserError(f"unknown class {value!r}: give a name ({shown}) or an index from 0 to "
                    f"{len(classes) - 1}")


# ---------------------------------------------------------------------------------------
# The model: rebuilt from a run, or built bare
# ---------------------------------------------------------------------------------------

@dataclass
class Subject:
    """A model ready to look at, and how to prepare an image for it."""
    model: nn.Module
    classes: list
    mean: tuple
    std: tuple
    stored_size: int   # an image is resized (shorter side) and centre-cropped to this side...
    input_size: int    # ...then normalised and upsampled by the Normalizer to this one
    label: str         # names the default output folder
    description: str   # for titles and predictions.json
    config: dict = None                         # the run's config (None for a bare model)
    warnings: list = field(default_factory=list)

    def normalizer(self):
        return Normalizer(self.mean, self.std, "cpu", image_size=self.input_size,
                          channels_last=False)


def _runs_below(directory):
    """The run directories under a study or configuration folder, relative to it."""
    return sorted(str(path.parent.relative_to(directory))
                  for path in Path(directory).glob("**/checkpoint.pt"))


def _rebuild(spec, state_dict, source):
    try:
        # The checkpoint holds every weight: build the architecture without reading ImageNet's.
        model = build_model(spec)
    except (ValueError, TypeError, KeyError) as error:
        raise UserError(f"{source} is a checkpoint of a model this repository cannot build "
                        f"({error}; spec {spec!r}): use a run of train_scratch.py, "
                        f"train_transfer.py, augment_study.py or dropout_sweep.py") from None
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        reason = " ".join(str(error).split())[:200]
        raise UserError(f"{source} does not fit the model its config names "
                        f"({spec.get('name')}): {reason}: the checkpoint and its config "
                        f"disagree; train the run again") from None
    return model


def load_run(run_dir):
    """The trained model of a run directory, with its classes, normalisation and input size."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"no run directory at {run_dir}: pass --run DIR of a finished training "
                        f"run (it holds checkpoint.pt and config.json)")
    path = run_dir / "checkpoint.pt"
    if not path.is_file() and _runs_below(run_dir):
        runs = _runs_below(run_dir)
        shown = ", ".join(runs[:6]) + (f" and {len(runs) - 6} more" if len(runs) > 6 else "")
        raise UserError(f"{run_dir} has no checkpoint.pt but holds runs ({shown}): pass one of "
                        f"them, e.g. --run {run_dir / runs[0]}")
    saved = load_checkpoint(path)  # UserError if missing, corrupt or carrying code
    config, state = saved.get("config"), saved.get("model")
    if not isinstance(config, dict) or "model" not in config or not isinstance(state, dict):
        raise UserError(f"{path} has no model state and config: it was not written by this "
                        f"project's training scripts")
    model = _rebuild(config["model"], state, path)
    subject = Subject(
        model=model, classes=list(config["classes"]),
        mean=tuple(config["normalization"]["mean"]), std=tuple(config["normalization"]["std"]),
        stored_size=int(config["stored_image_size"]), input_size=int(config["image_size"]),
        # <part>_<configuration>_seed<S>: the run directory's own name is only its seed
        label="_".join(run_dir.resolve().parts[-3:]), description=f"run {run_dir}", config=config)
    eval_augment = config.get("eval_augment")
    if eval_augment not in (None, "None"):
        subject.warnings.append(f"the run evaluated images through {eval_augment}; this tool "
                                f"shows the image without it")
    return subject


def _scratch_from_file(path, num_classes):
    state = pretrained.load_weights_file(path)  # UserError for a missing or unsafe file
    if "conv1.weight" not in state or "linear.weight" not in state:
        raise UserError(f"weights file {path} is not a state dict of the hand-written ResNet-18 "
                        f"(no conv1.weight / linear.weight): use --model transfer for "
                        f"torchvision's")
    file_classes = state["linear.weight"].shape[0]
    if num_classes not in (None, file_classes):
        raise UserError(f"weights file {path} has a {file_classes}-class head, not "
                        f"--num-classes {num_classes}: leave --num-classes out")
    spec = {"name": "resnet18_cifar", "num_classes": file_classes,
            "width": state["conv1.weight"].shape[0]}
    return _rebuild(spec, state, f"weights file {path}"), file_classes


def _transfer_from_file(path, num_classes, warnings):
    state = pretrained.load_weights_file(path)
    head = state.get("fc.weight")
    if num_classes is None:
        num_classes = head.shape[0] if head is not None else 10
    model = pretrained.model_from_spec({"name": "torchvision_resnet18", "num_classes": num_classes,
                                        "weights": str(path)})
    if head is not None and head.shape == model.fc.weight.shape and "fc.bias" in state:
        model.fc.load_state_dict({"weight": head, "bias": state["fc.bias"]})
    else:
        warnings.append(f"{path} has no linear {num_classes}-class head (fc.weight, fc.bias), so "
                        f"the head is untrained and the predictions mean nothing; use --run DIR "
                        f"for a run's own model")
    return model, num_classes


def build_bare(kind, weights, num_classes=None, input_size=None):
    """A model built from a flag rather than a run: --model scratch|transfer --weights W.

    transfer + imagenet keeps ImageNet's own 1000-way classifier, so the predictions are
    ImageNet categories; other combinations get a head of num_classes (default 10) that is
    untrained unless the weights file holds one. Images are normalised with ImageNet's
    statistics, the usual choice for photographs (CIFAR-10's are close).
    """
    if kind not in BARE_MODELS:
        raise UserError(f"unknown --model {kind!r}: choose one of {', '.join(BARE_MODELS)}")
    warnings = []
    weights = str(weights)
    if weights == "imagenet":
        if kind != "transfer":
            raise UserError("there are no ImageNet weights for the hand-written CIFAR "
                            "ResNet-18: use --model transfer --weights imagenet, or --run DIR "
                            "of a trained run")
        if num_classes is not None:
            raise UserError("--weights imagenet keeps ImageNet's 1000-class head: leave "
                            "--num-classes out (it is for --weights none or PATH)")
        model = torchvision.models.resnet18(weights=None)
        model.load_state_dict(pretrained.load_imagenet(progress=sys.stderr.isatty()))
        classes = list(pretrained.IMAGENET_WEIGHTS.meta["categories"])
    else:
        if weights == "none":
            warnings.append("--weights none: an untrained network has random filters, so its "
                            "activations show little; use --run DIR or --weights imagenet")
            num_classes = num_classes or 10
            model = (build_model({"name": "resnet18_cifar", "num_classes": num_classes})
                     if kind == "scratch" else
                     build_model({"name": "torchvision_resnet18", "num_classes": num_classes}))
        elif kind == "scratch":
            model, num_classes = _scratch_from_file(weights, num_classes)
        else:
            model, num_classes = _transfer_from_file(weights, num_classes, warnings)
        classes = [f"class{index}" for index in range(num_classes)]
    size = input_size or BARE_INPUT_SIZE[kind]
    weights_label = Path(weights).stem if weights not in ("none", "imagenet") else weights
    return Subject(model=model, classes=classes, mean=IMAGENET_STATS[0], std=IMAGENET_STATS[1],
                   stored_size=size, input_size=size, label=f"{kind}_{weights_label}",
                   description=f"--model {kind} --weights {weights}", warnings=warnings)


# ---------------------------------------------------------------------------------------
# The image
# ---------------------------------------------------------------------------------------

@dataclass
class Picture:
    pixels: torch.Tensor  # (3, S, S) uint8 at the subject's stored size
    label: str            # names the default output folder
    description: str      # short, for titles
    source: str           # where it came from, for predictions.json
    true_class: str = None


def read_photo(path, size):
    """Any photograph: shorter side resized to `size`, centre-cropped (as the folder source)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no image at {path}: pass --image PATH of a photograph (PNG, JPEG...)")
    return Picture(read_image(path, size), label=path.stem, description=path.name,
                   source=str(path))


def dataset_picture(subject, data_dir=None, index=None, class_wanted=None):
    """A test image of the run's own dataset: the index-th (default first) image of a class,
    or the index-th test image; by default the report's car (or the first test image)."""
    config = subject.config
    if config is None:
        raise UserError("--model needs --image PATH: a bare model has no dataset to take an "
                        "image from (use --run DIR for --index / --class)")
    data_dir = data_dir or config["args"].get("data_dir", "data")
    # As engine.training.load_data loads it, so the image is one the run was tested on.
    _, test = load_source(config["dataset"], data_dir, image_size=subject.stored_size)
    if class_wanted is None and index is None and DEFAULT_CLASS in test.classes:
        class_wanted = DEFAULT_CLASS
    candidates = torch.arange(len(test))
    if class_wanted is not None:
        if class_wanted not in test.classes:
            raise UserError(f"the run's dataset has no class {class_wanted!r}: choose one of "
                            f"{', '.join(test.classes[:20])}")
        candidates = (test.labels == test.classes.index(class_wanted)).nonzero().flatten()
    index = index or 0
    if index >= len(candidates):
        where = f"of class {class_wanted!r} " if class_wanted else ""
        raise UserError(f"--index {index} is out of range: the test split has {len(candidates)} "
                        f"images {where}(0 to {len(candidates) - 1})")
    chosen = int(candidates[index])
    true_class = test.classes[int(test.labels[chosen])]
    description = f"{config['dataset']} test image {chosen} ({true_class})"
    return Picture(test.images[chosen], label=f"test{chosen}_{true_class}",
                   description=description, source=f"{description} from {data_dir}",
                   true_class=true_class)


# ---------------------------------------------------------------------------------------
# Looking: one forward pass, then everything computed before anything is written
# ---------------------------------------------------------------------------------------

@dataclass
class Findings:
    layers: list        # the chosen Layers, forward order
    outputs: dict       # layer name -> (1, ...) tensor, detached
    stats: list         # stats.csv rows
    predictions: list   # top-5
    cams: list          # (title, class index, (H, W) map)
    cam_layer: Layer
    overview: list      # the Layers on overview.png
    output_name: str    # the last layer: the logits


def look(subject, capture, picture, layers, cam_layer, target_class=None, overview=None):
    """One forward pass with gradients: activations, statistics, top-5, Grad-CAM maps."""
    inputs = subject.normalizer()(picture.pixels[None])
    # The input needs a gradient so that every activation is in the autograd graph, even
    # where parameters are frozen.
    inputs.requires_grad_(True)
    logits, outputs = capture.run(inputs)
    predictions = top_predictions(logits, subject.classes)
    predicted = predictions[0]["index"]
    cam_targets = [("predicted", predicted)]
    if target_class is not None:
        cam_targets.append(("target", target_class))
    activation = outputs[cam_layer.name]
    probabilities = logits.detach()[0].softmax(dim=0)
    cams = [(f"{role}: {class_name(subject.classes, index)} (p = {probabilities[index]:.3f})",
             index, grad_cam(logits, activation, index)) for role, index in cam_targets]
    outputs = {name: tensor.detach() for name, tensor in outputs.items()}
    layers = [layer for layer in layers if layer.name in outputs]  # not sizes or other numbers
    return Findings(layers, outputs, stats_rows(layers, outputs), predictions, cams, cam_layer,
                    overview or overview_layers(capture), capture.layers[-1].name)


def overview_layers(capture):
    """The report's sequence of layers, skipping identity modules (a CIFAR stem's maxpool)."""
    layers = [capture.layer(name) for name in OVERVIEW_LAYERS if capture.knows(name)]
    return [layer for layer in layers if layer.kind != "Identity"]


# ---------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------

def scale_each_channel(maps):
    """(C, H, W) -> each map scaled to [0, 1] on its own; a constant map (a dead one) is 0."""
    low = maps.amin(dim=(1, 2), keepdim=True)
    span = maps.amax(dim=(1, 2), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / span.clamp_min(1e-12), torch.zeros_like(maps))


EMPTY_TILE = -1.0  # a grid cell with no channel (drawn white); gaps between tiles are NaN


def channel_grid(maps, max_channels=64, columns=None, gap=1, min_tile=32):
    """(C, H, W) -> a 2-D mosaic of the first max_channels maps, each scaled to [0, 1] on its
    own, with NaN gaps between tiles (drawn in GAP_COLOUR) and EMPTY_TILE cells after the last.

    Small maps (layer4's 4x4) are first enlarged by a whole factor to about min_tile pixels,
    so that a one-pixel gap stays thin beside them.
    """
    maps = scale_each_channel(maps[:max_channels].float())
    factor = max(1, min_tile // max(maps.shape[1:]))
    maps = maps.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
    count, height, width = maps.shape
    columns = min(columns or math.ceil(math.sqrt(count)), count)
    rows = math.ceil(count / columns)
    mosaic = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap), np.nan,
                     dtype=np.float32)
    for cell in range(rows * columns):
        top, left = (cell // columns) * (height + gap), (cell % columns) * (width + gap)
        mosaic[top:top + height, left:left + width] = (maps[cell].numpy() if cell < count
                                                       else EMPTY_TILE)
    return mosaic


def is_spatial(tensor):
    """A map worth drawing as an image: (1, C, H, W) with more than one pixel."""
    return tensor.dim() == 4 and tensor.shape[-1] * tensor.shape[-2] > 1


def _show_mosaic(axes, mosaic):
    colours = plt.get_cmap("gray").with_extremes(bad=GAP_COLOUR, under="white")
    axes.imshow(np.ma.masked_invalid(mosaic), cmap=colours, vmin=0, vmax=1,
                interpolation="nearest")
    axes.set_xticks([])
    axes.set_yticks([])


def _show_vector(axes, values, names=None):
    # One stairs artist, not a bar per value: a 1000-way head would take seconds to draw.
    axes.stairs(values.numpy(), np.arange(len(values) + 1) - 0.5, baseline=0, fill=True,
                color="0.3")
    axes.set_xlim(-0.5, len(values) - 0.5)
    if names is not None and len(names) == len(values) and len(names) <= 20:
        axes.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    else:
        axes.set_xlabel("channel")
    axes.grid(alpha=0.3, axis="y")


def _layer_title(layer, tensor):
    shape = "x".join(map(str, tensor.shape[1:]))
    also = f"; output of {', '.join(layer.aliases)}" if layer.aliases else ""
    return f"{layer.index}: {layer.name} ({layer.kind}{also}), {shape}"


def _title_font(size=14):
    # matplotlib's own font, so the layer pictures read like the matplotlib figures.
    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


def write_grid_png(path, mosaic, lines, target_side=640, margin=10, line_height=20):
    """A mosaic (NaN gaps) as a PNG, upscaled by a whole factor (crisp pixels), titled.

    Drawn with PIL rather than matplotlib: a network has ~70 layers, and a matplotlib figure
    each took most of the run time.
    """
    scale = max(1, target_side // max(mosaic.shape))
    big = np.repeat(np.repeat(mosaic, scale, axis=0), scale, axis=1)
    gaps, empty = np.isnan(big), big == EMPTY_TILE
    rgb = np.repeat((np.nan_to_num(big).clip(0, 1) * 255).round().astype(np.uint8)[..., None],
                    3, axis=2)
    rgb[gaps] = tuple(int(GAP_COLOUR[i:i + 2], 16) for i in (1, 3, 5))
    rgb[empty] = 255
    header = margin + line_height * len(lines)
    canvas = Image.new("RGB", (max(rgb.shape[1], 480) + 2 * margin, rgb.shape[0] + header + margin),
                       "white")
    canvas.paste(Image.fromarray(rgb), (margin, header))
    draw, font = ImageDraw.Draw(canvas), _title_font()
    for number, line in enumerate(lines):
        draw.text((margin, margin // 2 + number * line_height), line, fill="black", font=font)
    with atomic.atomic_path(path) as temporary:
        canvas.save(temporary, format="PNG", compress_level=1)


def plot_layer(path, layer, tensor, max_channels=64, class_names=None):
    """One layer: its channels as grayscale maps (each scaled on its own), or a bar chart for
    a vector (or 1x1 maps, where a map scaled on its own would be one flat grey); the
    logits' bars are labelled with class_names."""
    channels = tensor.shape[1]
    dead = layer_stats(tensor)["dead_channels"]
    if is_spatial(tensor):
        shown = (f"first {max_channels} of {channels} channels" if channels > max_channels
                 else f"{channels} channels")
        write_grid_png(path, channel_grid(tensor[0], max_channels),
                       [_layer_title(layer, tensor),
                        f"{shown}, each scaled on its own; {dead} all zero (black)"])
        return
    figure, axes = plt.subplots(figsize=(9, 3.2))
    _show_vector(axes, tensor[0].flatten(), class_names)
    what = "logits" if class_names else "values"
    axes.set_title(f"{_layer_title(layer, tensor)}\n{channels} {what}; {dead} zero", fontsize=9)
    save_figure(figure, path)


def plot_overview(path, picture, layers, outputs, subject_description,
                  channels=OVERVIEW_CHANNELS):
    """The image, then the first few channels of each layer, one row per layer."""
    figure, rows = plt.subplots(len(layers) + 1, 1, figsize=(12, 1.75 * (len(layers) + 1)),
                                squeeze=False)
    image_axes = rows[0][0]
    image_axes.imshow(picture.pixels.permute(1, 2, 0).numpy(), interpolation="nearest")
    image_axes.set_title(f"{picture.description}, as the model sees it", fontsize=9)
    image_axes.axis("off")
    for (axes,), layer in zip(rows[1:], layers):
        tensor = outputs[layer.name]
        if is_spatial(tensor):
            _show_mosaic(axes, channel_grid(tensor[0], channels, columns=channels))
            shown = min(channels, tensor.shape[1])
            note = f"channels 0-{shown - 1} of {tensor.shape[1]}, each scaled on its own"
        else:
            _show_vector(axes, tensor[0].flatten())
            note = "values"
        axes.set_title(f"{_layer_title(layer, tensor)}: {note}", fontsize=9, loc="left")
    figure.suptitle(f"Activations of {subject_description}", fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 0.985))
    save_figure(figure, path)


def plot_gradcam(path, picture, findings):
    """The image, and each class's Grad-CAM over it (upsampled bilinearly to the image)."""
    image = picture.pixels.permute(1, 2, 0).numpy()
    side = image.shape[0]
    figure, panels = plt.subplots(1, len(findings.cams) + 1,
                                  figsize=(4 * (len(findings.cams) + 1), 4.4), squeeze=False)
    panels = panels[0]
    panels[0].imshow(image, interpolation="nearest")
    panels[0].set_title(picture.description, fontsize=9)
    for axes, (title, _, cam) in zip(panels[1:], findings.cams):
        axes.imshow(image, interpolation="nearest")
        overlay = F.interpolate(cam[None, None], size=(side, side), mode="bilinear",
                                align_corners=False)[0, 0]
        axes.imshow(overlay.numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1,
                    interpolation="bilinear")
        axes.set_title(title if cam.max() > 0 else f"{title}\nno positive evidence in this layer",
                       fontsize=9)
    for axes in panels:
        axes.axis("off")
    layer = findings.cam_layer
    height, width = findings.cams[0][2].shape
    figure.suptitle(f"Grad-CAM from {layer.name}"
                    f"{' (' + ', '.join(layer.aliases) + ')' if layer.aliases else ''}, "
                    f"{height}x{width} map", fontsize=10)
    save_figure(figure, path)


# ---------------------------------------------------------------------------------------
# The output folder
# ---------------------------------------------------------------------------------------

OUTPUT_FILES = ("overview.png", "gradcam.png", "stats.csv", "predictions.json")


def layer_file_name(layer):
    return f"{layer.index:03d}_{layer.name}.png"  # sorts in forward order


def check_output_dir(out, overwrite):
    """Refuse to mix with an earlier result unless --overwrite (then its files are replaced)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: pass a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} already holds results: pass --overwrite to replace them, or "
                        f"another --out")


def clear_previous(out):
    """Remove what an earlier run of this tool wrote (only its own files)."""
    for name in OUTPUT_FILES:
        (out / name).unlink(missing_ok=True)
    if (out / "layers").is_dir():
        shutil.rmtree(out / "layers")


def write_results(out, subject, picture, findings, max_channels=64, overwrite=False):
    out = Path(out)
    if overwrite:
        clear_previous(out)
    for layer in findings.layers:
        plot_layer(out / "layers" / layer_file_name(layer), layer, findings.outputs[layer.name],
                   max_channels, subject.classes if layer.name == findings.output_name else None)
    plot_overview(out / "overview.png", picture, findings.overview, findings.outputs,
                  subject.description)
    plot_gradcam(out / "gradcam.png", picture, findings)
    atomic.write_text(out / "stats.csv", stats_csv_text(findings.stats))
    atomic.write_json(out / "predictions.json", {
        "model": subject.description,
        "image": picture.source,
        "true_class": picture.true_class,
        "top5": findings.predictions,
        "gradcam_layer": findings.cam_layer.name,
        "gradcam_classes": [class_name(subject.classes, index) for _, index, _ in findings.cams],
    })


__all__ = ["LayerCapture", "Layer", "layer_table", "layer_stats", "grad_cam", "load_run",
           "build_bare", "read_photo", "dataset_picture", "look", "write_results",
           "check_output_dir", "channel_grid", "top_predictions", "class_index"]
