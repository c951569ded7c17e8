"""Part (d): one image through a network, layer by layer: activations, statistics, Grad-CAM.

Layers are captured with torchvision's feature extraction (torch.fx) rather than forward hooks,
so that the ReLUs and residual sums applied as functions are layers too (docs/parts.md, part (d)).
"""
import csv
import difflib
import io
import math
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
from torchvision.utils import make_grid

from engine import atomic, pretrained
from engine.checkpoint import load_checkpoint
from engine.errors import UserError
from engine.loader import IMAGENET_STATS, Normalizer
from engine.plots import save_figure, subplots
from engine.sources import load_source, read_image
from models import build_model

INPUT = "input"
DEFAULT_CAM_LAYER = "layer4"
# overview.png: the report's sequence of layers (names a model lacks are skipped), 8 channels each.
OVERVIEW_LAYERS = (INPUT, "conv1", "relu", "maxpool", "layer1.0.relu", "layer1.0.conv2",
                   "layer1", "layer2", "layer3", "layer4")
OVERVIEW_CHANNELS = 8
DEFAULT_CLASSES = ("automobile", "car")  # the report's example is a car: CIFAR's, STL-10's name
# --model: (build_model name, its classifier's state-dict prefix, default input side)
BARE_MODELS = {"scratch": ("resnet18_cifar", "linear", 32),
               "transfer": ("torchvision_resnet18", "fc", 224)}
GAP_RGB = (0.18, 0.31, 0.54)  # between channel tiles, so that black (dead) maps stay visible
STATS_COLUMNS = ("index", "layer", "kind", "shape", "channels", "mean", "std", "min", "max",
                 "fraction_zero", "dead_channels", "output_of")
OUTPUT_FILES = ("overview.png", "gradcam.png", "stats.csv", "predictions.json")  # and layers/


def _shape(tensor):
    return "x".join(map(str, tensor.shape[1:]))  # without the batch


# --- capturing every layer's output ----------------------------------------------------------

@dataclass(frozen=True)
class Layer:
    name: str            # feature-extraction name ("input" for the image)
    kind: str            # the module's class (Conv2d...) or the function (relu, add...)
    index: int           # position in forward order (0 is the input)
    aliases: tuple = ()  # modules whose output this is, innermost first: ("layer1.1", "layer1")


class LayerCapture:
    """Every intermediate tensor of a model's forward pass, by name, in forward order; in-place
    modules are made out of place, or ReLU(inplace=True) would overwrite the bn1 output kept."""

    def __init__(self, model):
        model.eval()
        for module in model.modules():
            if getattr(module, "inplace", False) is True:
                module.inplace = False
        # Every childless module is one node (EvalModeBatchNorm2d too, not only torch.nn's);
        # containers are traced through, even an identity shortcut's empty Sequential.
        leaves = list({type(module) for module in model.modules()
                       if next(module.children(), None) is None
                       and not isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict))})
        try:
            _, names = get_graph_node_names(model, {"leaf_modules": leaves})
            self.extractor = create_feature_extractor(model, names,
                                                      tracer_kwargs={"leaf_modules": leaves})
        except Exception as error:  # fx raises TraceError, TypeError... on dynamic control flow
            raise UserError(f"cannot trace {type(model).__name__} with torch.fx "
                            f"({type(error).__name__}: {str(error).splitlines()[0][:160]}): "
                            f"this tool needs a model without data-dependent control flow"
                            ) from None
        nodes = next(node for node in self.extractor.graph.nodes if node.op == "output").args[0]
        self._input = names[0]  # the placeholder, named after forward's argument
        # A module's path names its output, the last node inside it (create_feature_extractor's
        # rule); named_modules lists a stage before its blocks, so insert(0) puts blocks first.
        owners = {}
        for path, module in model.named_modules():
            inside = [name for name in names if name.startswith(path + ".")]
            if path and inside and next(module.children(), None) is not None:
                owners.setdefault(inside[-1], []).insert(0, path)
        self.layers = [Layer(INPUT if index == 0 else name, self._kind(nodes[name]), index,
                             tuple(owners.get(name, ()))) for index, name in enumerate(names)]
        self.names = [layer.name for layer in self.layers]
        self.by_name = {layer.name: layer for layer in self.layers}
        self.aliases = {alias: layer.name for layer in self.layers for alias in layer.aliases}

    def _kind(self, node):
        if node.op == "placeholder":
            return INPUT
        if node.op == "call_module":
            return type(self.extractor.get_submodule(node.target)).__name__
        return getattr(node.target, "__name__", str(node.target))

    def find(self, name):
        """The layer a name or module path (its output) names, or None."""
        return self.by_name.get(self.aliases.get(name, name))

    def layer(self, name):
        """As find, but a UserError naming the valid names (and the closest) if there is none."""
        if self.find(name) is None:
            valid = self.names + list(self.aliases)
            close = [f" (did you mean {match!r}?)" for match in
                     difflib.get_close_matches(name, valid, n=1)]
            more = f" and {len(valid) - 12} more" if len(valid) > 12 else ""
            raise UserError(f"unknown layer {name!r}{''.join(close)}: valid names are "
                            f"{', '.join(valid[:12])}{more}; run with --list-layers to see "
                            f"them all")
        return self.find(name)

    def resolve(self, names):
        """Layers for names or module paths, in forward order, each once."""
        chosen = {self.layer(name).name for name in names}
        return [layer for layer in self.layers if layer.name in chosen]

    def run(self, inputs):
        """(logits, {layer name: output tensor}) for a batch; gradients flow (for Grad-CAM)."""
        outputs = {INPUT if name == self._input else name: value
                   for name, value in self.extractor(inputs).items()}
        return outputs[self.names[-1]], {name: value for name, value in outputs.items()
                                         if isinstance(value, torch.Tensor)}


def layer_table(capture, input_size):
    """The --list-layers table (shapes from a zero image)."""
    with torch.no_grad():
        _, outputs = capture.run(torch.zeros(1, 3, input_size, input_size))
    width = max(len(name) for name in capture.names)
    kind_width = max(len(layer.kind) for layer in capture.layers)
    lines = [f"{'#':>3}  {'name':<{width}}  {'kind':<{kind_width}}  {'shape':<12}  output of"]
    for layer in capture.layers:
        shape = _shape(outputs[layer.name]) if layer.name in outputs else ""
        lines.append(f"{layer.index:>3}  {layer.name:<{width}}  {layer.kind:<{kind_width}}  "
                     f"{shape:<12}  {', '.join(layer.aliases)}".rstrip())
    return "\n".join(lines)


# --- statistics, Grad-CAM, classes -----------------------------------------------------------

def stats_rows(layers, outputs):
    """stats.csv's rows for one image (1, C, ...): a dead channel is all zero for it; each
    feature of a vector counts as a channel."""
    rows = []
    for layer in layers:
        values = outputs[layer.name].detach()[0].float()
        per_channel = values.reshape(len(values), -1)
        rows.append({"index": layer.index, "layer": layer.name, "kind": layer.kind,
                     "shape": "x".join(map(str, values.shape)), "channels": len(per_channel),
                     "mean": values.mean().item(),
                     "std": values.std(correction=0).item(),  # of these values, not an estimate
                     "min": values.min().item(), "max": values.max().item(),
                     "fraction_zero": (values == 0).float().mean().item(),
                     "dead_channels": int((per_channel == 0).all(dim=1).sum()),
                     "output_of": " ".join(layer.aliases)})
    return rows


def stats_csv_text(rows):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, STATS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: f"{value:.6g}" if isinstance(value, float) else value
                      for key, value in row.items()} for row in rows)
    return buffer.getvalue()


def grad_cam(logits, activation, class_index):
    """Grad-CAM (Selvaraju et al. 2017) of one class on a (1, C, H, W) output: (H, W) in [0, 1],
    from the logit's gradient (the softmax's would mix in the other classes)."""
    if activation.dim() != 4:
        raise UserError(f"Grad-CAM needs a layer with spatial maps (C x H x W); this one has "
                        f"shape {_shape(activation)}: choose --cam-layer among the conv, BN, "
                        f"ReLU or block outputs")
    gradient, = torch.autograd.grad(logits[0, class_index], activation, retain_graph=True)
    weights = gradient[0].mean(dim=(1, 2))
    cam = F.relu((weights[:, None, None] * activation[0]).sum(dim=0)).detach()
    return cam / cam.max() if cam.max() > 0 else cam


def class_index(value, classes):
    """A class given by name or by index; UserError naming the choices otherwise."""
    if value in classes:
        return classes.index(value)
    if value.isdecimal() and int(value) < len(classes):
        return int(value)
    shown = ", ".join(classes[:10]) + (f" ... ({len(classes)} classes)"
                                       if len(classes) > 10 else "")
    raise UserError(f"unknown class {value!r}: give a name ({shown}) or an index from 0 to "
                    f"{len(classes) - 1}")


# --- the model: rebuilt from a run, or built bare ----------------------------------------------

@dataclass
class Subject:
    """A model ready to look at, and how to prepare an image for it."""
    model: nn.Module
    classes: list
    mean: tuple
    std: tuple
    stored_size: int   # an image is resized (shorter side) and centre-cropped to this side...
    input_size: int    # ...then normalised and resized by the Normalizer to this one
    label: str         # names the default output folder
    description: str   # for titles and predictions.json
    config: dict = None  # the run's config (None for a bare model)
    warnings: list = field(default_factory=list)

    def normalizer(self):
        return Normalizer(self.mean, self.std, "cpu", image_size=self.input_size,
                          channels_last=False)


def _rebuild(spec, state_dict, source):
    """build_model(spec) with every weight from state_dict (strict), or a UserError."""
    try:
        model = build_model(spec)
    except (ValueError, TypeError, KeyError) as error:
        raise UserError(f"{source} is a checkpoint of a model this repository cannot build "
                        f"({error}; spec {spec!r}): use a run of train_scratch.py, "
                        f"train_transfer.py, augment_study.py or dropout_sweep.py") from None
    return pretrained.load_into(model, state_dict, source, f"the model its config names "
                                f"({spec.get('name')})", "the checkpoint and its config "
                                "disagree; train the run again")


def load_run(run_dir):
    """The trained model of a run directory, with its classes, normalisation and input size."""
    run_dir = Path(run_dir)
    path = run_dir / "checkpoint.pt"
    runs = sorted(str(found.parent.relative_to(run_dir))
                  for found in run_dir.glob("**/checkpoint.pt"))
    if not path.is_file() and runs:  # a study or configuration folder
        shown = ", ".join(runs[:6]) + (f" and {len(runs) - 6} more" if len(runs) > 6 else "")
        raise UserError(f"{run_dir} has no checkpoint.pt but holds runs ({shown}): pass one of "
                        f"them, e.g. --run {run_dir / runs[0]}")
    saved = load_checkpoint(path)  # UserError if missing, corrupt or carrying code
    config, state = saved.get("config"), saved.get("model")
    if not isinstance(config, dict) or "model" not in config or not isinstance(state, dict):
        raise UserError(f"{path} has no model state and config: it was not written by this "
                        f"project's training scripts")
    subject = Subject(
        model=_rebuild(config["model"], state, path),  # every weight is in the checkpoint
        classes=list(config["classes"]), mean=tuple(config["normalization"]["mean"]),
        std=tuple(config["normalization"]["std"]), stored_size=int(config["stored_image_size"]),
        input_size=int(config["image_size"]),
        # <part>_<configuration>_seed<S>: the run directory's own name is only its seed
        label="_".join(run_dir.resolve().parts[-3:]), description=f"run {run_dir}", config=config)
    if config.get("eval_augment") not in (None, "None"):
        subject.warnings.append(f"the run evaluated images through {config['eval_augment']}; "
                                f"this tool shows the image without it")
    return subject


def build_bare(kind, weights, num_classes=None, input_size=None):
    """--model KIND --weights imagenet|none|PATH, ImageNet-normalised; heads: docs/parts.md,
    part (d)."""
    name, head, default_size = BARE_MODELS[kind]
    weights, warnings = str(weights), []
    if weights == "imagenet" and kind == "scratch":
        raise UserError("there are no ImageNet weights for the hand-written CIFAR ResNet-18: use "
                        "--model transfer --weights imagenet, or --run DIR of a trained run")
    if weights == "imagenet" and num_classes is not None:
        raise UserError("--weights imagenet keeps ImageNet's 1000-class head: leave "
                        "--num-classes out (it is for --weights none or PATH)")
    if weights == "none":
        warnings.append("--weights none: an untrained network has random filters, so its "
                        "activations show little; use --run DIR or --weights imagenet")
        model = build_model({"name": name, "num_classes": num_classes or 10})
    else:
        state = pretrained.load_weights(weights, progress=sys.stderr.isatty())
        head_weight = state.get(f"{head}.weight")
        file_classes = len(head_weight) if head_weight is not None and head_weight.dim() else None
        if kind == "scratch":
            if num_classes not in (None, file_classes) and file_classes is not None:
                raise UserError(f"weights file {weights} has a {file_classes}-class head, not "
                                f"--num-classes {num_classes}: leave --num-classes out")
            conv1 = state.get("conv1.weight")
            spec = {"name": name, "num_classes": file_classes or num_classes or 10,
                    "width": len(conv1) if conv1 is not None and conv1.dim() else 64}
            model = pretrained.load_into(
                build_model(spec), state, f"weights file {weights}",
                "the hand-written CIFAR ResNet-18", "pass a state dict of models/resnet.py's "
                "network (kuangliu/pytorch-cifar's ResNet18 has the same keys), or use --model "
                "transfer for torchvision's resnet18")
        else:
            spec = {"name": name, "num_classes": num_classes or file_classes or 10}
            model = pretrained.model_from_spec({**spec, "weights": weights})  # the backbone
            try:  # and the file's own head, where it fits
                model.fc.load_state_dict({key[3:]: value for key, value in state.items()
                                          if key.startswith("fc.")})
            except RuntimeError:
                warnings.append(f"{weights} has no linear {spec['num_classes']}-class head "
                                f"(fc.weight, fc.bias), so the head is untrained and the "
                                f"predictions mean nothing; use --run DIR for a run's own model")
    classes = (list(pretrained.IMAGENET_WEIGHTS.meta["categories"]) if weights == "imagenet" else
               [f"class{index}" for index in range(model.get_submodule(head).out_features)])
    size = input_size or default_size
    label = weights if weights in ("none", "imagenet") else Path(weights).stem
    return Subject(model=model, classes=classes, mean=IMAGENET_STATS[0], std=IMAGENET_STATS[1],
                   stored_size=size, input_size=size, label=f"{kind}_{label}",
                   description=f"--model {kind} --weights {weights}", warnings=warnings)


# --- the image ---------------------------------------------------------------------------------

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
    """The index-th (default first) test image of the run's dataset, of class_wanted if given;
    by default the report's car, else the first test image."""
    config = subject.config
    data_dir = data_dir or config["args"].get("data_dir", "data")
    # As engine.training loads it, so that the image is one the run was tested on.
    _, test = load_source(config["dataset"], data_dir, image_size=subject.stored_size)
    if class_wanted is None and index is None:
        class_wanted = next((name for name in DEFAULT_CLASSES if name in test.classes), None)
    candidates = torch.arange(len(test))
    if class_wanted is not None:
        label = class_index(class_wanted, test.classes)  # a name, or an index (MNIST's "7")
        class_wanted = test.classes[label]
        candidates = (test.labels == label).nonzero().flatten()
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


# --- looking: one forward pass, everything computed before anything is written ----------------

@dataclass
class Findings:
    layers: list       # the chosen Layers, in forward order
    outputs: dict      # layer name -> (1, ...) tensor, detached
    stats: list        # stats.csv rows of the chosen layers
    predictions: list  # top-5: {"class", "index", "probability"}
    cams: list         # (title, class index, (H, W) map)
    cam_layer: Layer
    overview: list     # the Layers on overview.png
    logits_name: str


def look(subject, capture, picture, layers, cam_layer, target_class=None, overview=None):
    """One forward pass with gradients: activations, statistics, top-5, Grad-CAM maps."""
    # The input needs a gradient so that every activation is in the autograd graph, even
    # where parameters are frozen.
    logits, outputs = capture.run(subject.normalizer()(picture.pixels[None]).requires_grad_(True))
    probabilities = logits.detach()[0].float().softmax(dim=0)
    top = probabilities.topk(min(5, len(probabilities)))
    predictions = [{"class": subject.classes[index], "index": index, "probability": p}
                   for p, index in zip(top.values.tolist(), top.indices.tolist())]
    targets = [("predicted", predictions[0]["index"])]
    if target_class is not None:
        targets.append(("target", target_class))
    cams = [(f"{role}: {subject.classes[index]} (p = {probabilities[index]:.3f})",
             index, grad_cam(logits, outputs[cam_layer.name], index)) for role, index in targets]
    outputs = {name: tensor.detach() for name, tensor in outputs.items()}
    layers = [layer for layer in layers if layer.name in outputs]  # not sizes or other numbers
    if overview is None:  # skipping identity modules (a CIFAR stem's maxpool)
        overview = [layer for layer in map(capture.find, OVERVIEW_LAYERS)
                    if layer is not None and layer.kind != "Identity"]
    return Findings(layers, outputs, stats_rows(layers, outputs), predictions, cams, cam_layer,
                    overview, capture.names[-1])


# --- pictures ----------------------------------------------------------------------------------

def is_spatial(tensor):
    """A map worth drawing as an image: (1, C, H, W) with more than one pixel."""
    return tensor.dim() == 4 and tensor.shape[-1] * tensor.shape[-2] > 1


def _title(layer, tensor):
    also = f"; output of {', '.join(layer.aliases)}" if layer.aliases else ""
    return f"{layer.index}: {layer.name} ({layer.kind}{also}), {_shape(tensor)}"


def _draw(axes, tensor, channels, columns=None, names=None):
    """A (1, C, H, W) output's first `channels` maps as grayscale tiles, each scaled on its own
    (a constant, dead, map is black); a vector or 1x1 maps as bars. Returns the title's note."""
    count = tensor.shape[1]
    if is_spatial(tensor):
        maps = tensor[0, :channels, None].float()
        # Small maps (layer4's 4x4) are enlarged to about 32 pixels so the gaps stay thin.
        maps = F.interpolate(maps, scale_factor=max(1, 32 // max(maps.shape[2:])))
        grid = make_grid(maps, nrow=columns or math.ceil(math.sqrt(len(maps))), padding=1,
                         normalize=True, scale_each=True, pad_value=float("nan"))
        grid = torch.where(grid.isnan(), torch.tensor(GAP_RGB)[:, None, None], grid)
        axes.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        axes.set_axis_off()
        return f"channels 0-{len(maps) - 1} of {count}, each scaled on its own"
    values = tensor[0].flatten().numpy()
    # One stairs artist, not a bar per value: a 1000-way head would take seconds to draw.
    axes.stairs(values, np.arange(len(values) + 1) - 0.5, baseline=0, fill=True, color="0.3")
    axes.set_xlim(-0.5, len(values) - 0.5)
    if names is not None and len(names) == len(values) <= 20:
        axes.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    else:
        axes.set_xlabel("channel")
    axes.grid(alpha=0.3, axis="y")
    return f"{count} {'logits' if names else 'values'}"


def plot_layer(path, layer, tensor, dead, max_channels, class_names=None):
    """One layer's picture: its maps, or its values (the logits' labelled with class_names)."""
    figure, axes = subplots(figsize=(5.5, 5.9) if is_spatial(tensor) else (9, 3.2))
    note = _draw(axes, tensor, max_channels, names=class_names)
    axes.set_title(f"{_title(layer, tensor)}\n{note}; {dead} all zero", fontsize=9, loc="left")
    save_figure(figure, path)


def plot_overview(path, picture, layers, outputs, subject_description):
    """The image, then the first few channels of each layer, one row per layer."""
    figure, rows = subplots(len(layers) + 1, 1, figsize=(12, 1.75 * (len(layers) + 1)),
                                squeeze=False)
    rows[0, 0].imshow(picture.pixels.permute(1, 2, 0).numpy(), interpolation="nearest")
    rows[0, 0].set_title(f"{picture.description}, as the model sees it", fontsize=9)
    rows[0, 0].axis("off")
    for axes, layer in zip(rows[1:, 0], layers):
        note = _draw(axes, outputs[layer.name], OVERVIEW_CHANNELS, columns=OVERVIEW_CHANNELS)
        axes.set_title(f"{_title(layer, outputs[layer.name])}: {note}", fontsize=9, loc="left")
    figure.suptitle(f"Activations of {subject_description}", fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 0.985))
    save_figure(figure, path)


def plot_gradcam(path, picture, findings):
    """The image, and each class's Grad-CAM over it (upsampled bilinearly to the image)."""
    image = picture.pixels.permute(1, 2, 0).numpy()
    figure, panels = subplots(1, len(findings.cams) + 1,
                                  figsize=(4 * (len(findings.cams) + 1), 4.4), squeeze=False)
    panels[0, 0].imshow(image, interpolation="nearest")
    panels[0, 0].set_title(picture.description, fontsize=9)
    for axes, (title, _, cam) in zip(panels[0, 1:], findings.cams):
        overlay = F.interpolate(cam[None, None], size=image.shape[:2], mode="bilinear")[0, 0]
        axes.imshow(image, interpolation="nearest")
        heat = axes.imshow(overlay.numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1,
                           interpolation="bilinear")
        figure.colorbar(heat, ax=axes, fraction=0.046, pad=0.02,
                        label="Grad-CAM (1: the map's maximum)")
        axes.set_title(title if cam.max() > 0 else f"{title}\nno positive evidence in this layer",
                       fontsize=9)
    for axes in panels[0]:
        axes.axis("off")
    layer = findings.cam_layer
    aliases = f" ({', '.join(layer.aliases)})" if layer.aliases else ""
    figure.suptitle(f"Grad-CAM from {layer.name}{aliases}, "
                    f"{'x'.join(map(str, findings.cams[0][2].shape))} map", fontsize=10)
    save_figure(figure, path)


# --- the output folder -------------------------------------------------------------------------

def check_output_dir(out, overwrite):
    """Refuse to mix with an earlier result unless --overwrite (then its files are replaced)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: pass a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} already holds results: pass --overwrite to replace them, or "
                        f"another --out")


def write_results(out, subject, picture, findings, max_channels=64, overwrite=False):
    out = Path(out)
    if overwrite:  # only this tool's own files
        for name in OUTPUT_FILES:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "layers", ignore_errors=True)
    for layer, row in zip(findings.layers, findings.stats):
        plot_layer(out / "layers" / f"{layer.index:03d}_{layer.name}.png",  # sorts in forward order
                   layer, findings.outputs[layer.name], row["dead_channels"], max_channels,
                   subject.classes if layer.name == findings.logits_name else None)
    plot_overview(out / "overview.png", picture, findings.overview, findings.outputs,
                  subject.description)
    plot_gradcam(out / "gradcam.png", picture, findings)
    atomic.write_text(out / "stats.csv", stats_csv_text(findings.stats))
    atomic.write_json(out / "predictions.json", {
        "model": subject.description, "image": picture.source, "true_class": picture.true_class,
        "top5": findings.predictions, "gradcam_layer": findings.cam_layer.name,
        "gradcam_classes": [subject.classes[index] for _, index, _ in findings.cams]})
