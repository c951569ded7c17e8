"""torchvision's ResNet-18 for transfer learning (part (b)): weights, heads, freezing.

The report's four configurations: random init vs ImageNet weights, all layers trainable vs
the first 7 children frozen (conv1, bn1, relu, maxpool, layer1, layer2, layer3), with a
linear head or one of its two MLP heads ("mlp" = config 1, "deep" = config 2, printed
exactly as in the report by `print(make_head("deep", 10))`).

What the report missed: ImageNet's stem (7x7 stride-2 conv + 3x3 stride-2 max-pool) divides
the side by 4 before layer1, and layer2..layer4 halve it three more times, so a 32x32 CIFAR
image is 1x1 by layer4: the pretrained features see almost no spatial structure. The
`cifar_stem` option swaps in a 3x3 stride-1 conv1 (freshly initialised) and drops the
max-pool, so layer4 sees 4x4, as in the hand-written CIFAR ResNet (models/resnet.py);
every other layer keeps its ImageNet weights. The usual alternative is to upsample the
images to 224x224 (16x the compute, done by the data loader, not here).

Also unlike the report, freezing here really freezes: the report set requires_grad=False,
but its frozen BatchNorm layers were still in train mode, so their running statistics kept
drifting towards CIFAR batches. Frozen BatchNorm layers here stay in eval mode.

Pretrained weights are data, never code: every file is loaded with weights_only=True, and the
cached ImageNet file's SHA-256 is checked against the prefix in its name on every load
(torch.hub checks it only when it downloads).
"""
import hashlib
import http.client
import os
import pathlib
import urllib.parse

import torch
import torch.nn as nn
import torchvision

from engine.checkpoint import one_line, safe_load
from engine.errors import UserError

HEADS = ("linear", "mlp", "deep")

IMAGENET_WEIGHTS = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
# Module-level so that tests can point it at a file they made (the real name carries the
# hash prefix of the real file, which a generated file cannot match).
IMAGENET_URL = IMAGENET_WEIGHTS.url

# model.children() order of torchvision's ResNet; the report froze the first 7 (up to layer3).
CHILD_NAMES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4",
               "avgpool", "fc")
REPORT_FROZEN_CHILDREN = 7

# Wrappers whose prefixes appear in state dicts saved from DDP ("module.") or torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


# ---------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------

def make_head(name, num_classes, in_features=512):
    """The classifier that replaces model.fc: "linear", or the report's config 1 / config 2."""
    if name not in HEADS:
        raise UserError(f"unknown head {name!r}: choose one of {', '.join(HEADS)}")
    if num_classes < 1:
        raise UserError(f"num_classes must be at least 1, got {num_classes}")
    if name == "linear":
        return nn.Linear(in_features, num_classes)
    if name == "mlp":
        return nn.Sequential(
            nn.Linear(in_features, 128), nn.ReLU(), nn.Dropout(0.3),
            nn.Linear(128, num_classes),
        )
    # "deep": five hidden layers, dropout 0.2 after each but the last (indices 0..14).
    widths = (in_features, 256, 128, 128, 64, 32)
    layers = []
    for depth, (width_in, width_out) in enumerate(zip(widths, widths[1:])):
        layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        if depth < len(widths) - 2:
            layers.append(nn.Dropout(0.2))
    layers.append(nn.Linear(widths[-1], num_classes))
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------
# Weights: the hub cache, local files
# ---------------------------------------------------------------------------------------

def imagenet_file_name():
    """resnet18-f37072fd.pth: the last part of the weights' URL, as torch.hub names it."""
    return os.path.basename(urllib.parse.urlparse(IMAGENET_URL).path)


def imagenet_cache_path():
    """Where torch.hub keeps the ImageNet file: $TORCH_HOME/hub/checkpoints/<file name>.

    torch.hub.get_dir() reads TORCH_HOME (default ~/.cache/torch) at call time, so this follows
    the environment the script runs in, exactly as torchvision's own download does.
    """
    return pathlib.Path(torch.hub.get_dir()) / "checkpoints" / imagenet_file_name()


def expected_hash_prefix(file_name):
    """The `<prefix>` of `name-<prefix>.pth`, parsed with torch.hub's own pattern."""
    match = torch.hub.HASH_REGEX.search(file_name)
    if match is None or not match.group(1):
        raise ValueError(f"{file_name} has no '-<sha256 prefix>.' part")
    return match.group(1)


def sha256_of_file(path, chunk_bytes=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_hash_prefix(path, expected_prefix):
    """Refuse a cached file whose SHA-256 does not start with the prefix in its name.

    A partial copy or a different file dropped into the cache would otherwise be loaded as
    "ImageNet weights" and silently spoil every pretrained run.
    """
    actual = sha256_of_file(path)
    if not actual.startswith(expected_prefix):
        raise UserError(
            f"{path} is not the expected ImageNet ResNet-18 file: its SHA-256 starts with "
            f"{actual[:len(expected_prefix)]}, expected {expected_prefix}; delete it so that it "
            f"is downloaded again, or pass --weights PATH"
        )


def _strip_wrapper_prefixes(state_dict):
    """Keys saved from a DDP or torch.compile wrapper, as the bare model's keys."""
    for prefix in _WRAPPER_PREFIXES:
        if state_dict and all(key.startswith(prefix) for key in state_dict):
            state_dict = {key[len(prefix):]: value for key, value in state_dict.items()}
    return state_dict


def _is_state_dict(obj):
    return (isinstance(obj, dict) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def load_weights_file(path):
    """A state dict from a local file: a raw one, or a checkpoint's {"model": state_dict}.

    weights_only=True: a file that pickles code is refused instead of run.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist: pass --weights PATH of a resnet18 "
                        f"state dict saved with torch.save")
    loaded = safe_load(path, f"weights file {path}", "pass --weights PATH of a state dict saved "
                       "with torch.save(model.state_dict(), PATH)")
    for key in ("model", "state_dict"):  # a training checkpoint holding the model's state dict
        if isinstance(loaded, dict) and _is_state_dict(loaded.get(key)):
            loaded = loaded[key]
            break
    if not _is_state_dict(loaded):
        raise UserError(f"weights file {path} does not hold a state dict (a dict of name -> "
                        f"tensor, or a checkpoint with one under 'model'): pass --weights PATH "
                        f"of a file saved with torch.save(model.state_dict(), PATH)")
    return _strip_wrapper_prefixes(loaded)


def _download_imagenet_state_dict(cache_path, progress):
    """torchvision's own download (what IMAGENET_WEIGHTS.get_state_dict does), into the cache.

    Called with IMAGENET_URL rather than through the enum so that the URL stays patchable;
    check_hash=True makes torch.hub verify the download against the name's prefix.
    """
    return torch.hub.load_state_dict_from_url(
        IMAGENET_URL, model_dir=str(cache_path.parent), map_location="cpu",
        progress=progress, check_hash=True, file_name=cache_path.name, weights_only=True,
    )


def load_imagenet_state_dict(progress=True):
    """ImageNet ResNet-18 weights: the verified hub-cache file, else a download, else UserError."""
    cache_path = imagenet_cache_path()
    if cache_path.is_file():
        verify_hash_prefix(cache_path, expected_hash_prefix(cache_path.name))
        return load_weights_file(cache_path)
    try:
        return _download_imagenet_state_dict(cache_path, progress)
    except (OSError, http.client.HTTPException) as error:  # URLError, timeouts, SSL, disk
        raise UserError(
            f"ImageNet weights not found at {cache_path} and cannot be downloaded "
            f"({one_line(error)[:200]}): put {cache_path.name} there (from {IMAGENET_URL}; "
            f"TORCH_HOME defaults to ~/.cache/torch), or pass --weights PATH"
        ) from None
    except RuntimeError as error:  # torch.hub's "invalid hash value", or an unreadable download
        raise UserError(
            f"downloaded ImageNet weights to {cache_path} but could not use them "
            f"({one_line(error)[:200]}): delete any partial {cache_path.name} and retry, "
            f"or pass --weights PATH"
        ) from None


def _few(keys, limit=4):
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _load_backbone(model, state_dict, source):
    """Load every layer but the head with strict=True, or say in one line why the file does not fit.

    The head is left out on both sides: it is replaced anyway, and a file saved from a model
    with another number of classes would otherwise fail on fc's shape.
    """
    backbone = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    # In state dict order, so the first keys shown are the first layers (conv1, bn1, ...).
    missing = [key for key in expected if key not in backbone]
    unexpected = [key for key in backbone if key not in expected]
    if missing or unexpected:
        raise UserError(
            f"{source} is not a resnet18 state dict: missing keys {_few(missing) or 'none'}; "
            f"unexpected keys {_few(unexpected) or 'none'}: pass --weights PATH of a "
            f"torchvision resnet18 state dict, or --weights imagenet"
        )
    wrong_shape = [f"{k} {tuple(backbone[k].shape)} vs {tuple(v.shape)}"
                   for k, v in expected.items() if backbone[k].shape != v.shape]
    if wrong_shape:
        raise UserError(f"{source} does not fit resnet18: shapes differ for "
                        f"{_few(wrong_shape, 3)}: pass --weights PATH of a torchvision resnet18 "
                        f"state dict (with the ImageNet 7x7 stem)")
    head = model.fc
    model.fc = nn.Identity()  # no parameters: strict=True now checks exactly the backbone
    model.load_state_dict(backbone, strict=True)
    model.fc = head


# ---------------------------------------------------------------------------------------
# Stem, freezing
# ---------------------------------------------------------------------------------------

def use_cifar_stem(model):
    """3x3 stride-1 conv1 and no max-pool, so a 32x32 image reaches layer4 as 4x4, not 1x1."""
    conv1 = nn.Conv2d(3, model.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision
    model.conv1 = conv1
    model.maxpool = nn.Identity()


class EvalModeBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that stays in eval mode: model.train() does not reach its statistics.

    Why this and not the alternatives:
    - overriding train() on the model misses calls on a sub-module (model.layer1.train()) and
      needs a ResNet subclass;
    - torchvision.ops.FrozenBatchNorm2d turns weight/bias into buffers and drops
      num_batches_tracked, so state dict keys and parameter counts would differ between frozen
      and unfrozen runs of the same architecture.
    This subclass has the same parameters, buffers and state dict keys as nn.BatchNorm2d, and
    nn.Module.train() calls train() on every module recursively, so it is caught wherever the
    mode is set from.
    """

    def train(self, mode=True):
        return super().train(False)

    @classmethod
    def from_batchnorm(cls, bn):
        frozen = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                     track_running_stats=bn.track_running_stats)
        frozen.to(device=bn.running_mean.device, dtype=bn.running_mean.dtype)
        frozen.load_state_dict(bn.state_dict())
        return frozen.train(False)


def _keep_batchnorm_in_eval(module):
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, EvalModeBatchNorm2d):
            setattr(module, name, EvalModeBatchNorm2d.from_batchnorm(child))
        else:
            _keep_batchnorm_in_eval(child)


def freeze_first_children(model, count):
    """Freeze model.children()[:count]: no gradients, and BatchNorm statistics kept as loaded."""
    frozen_names = [name for name, _ in model.named_children()][:count]
    for name in frozen_names:
        child = getattr(model, name)
        if isinstance(child, nn.BatchNorm2d):
            setattr(model, name, EvalModeBatchNorm2d.from_batchnorm(child))
        else:
            _keep_batchnorm_in_eval(child)
        getattr(model, name).requires_grad_(False)


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------

def _check_options(weights, head, freeze_children, cifar_stem):
    if head not in HEADS:
        raise UserError(f"unknown head {head!r}: choose one of {', '.join(HEADS)}")
    # The head is never frozen: with nothing trainable there would be nothing to train.
    most = len(CHILD_NAMES) - 1
    if not 0 <= freeze_children <= most:
        raise UserError(f"freeze_children must be between 0 and {most} (children "
                        f"{', '.join(CHILD_NAMES)}), got {freeze_children}")
    if freeze_children and weights == "none":
        raise UserError(f"freezing {freeze_children} children of a randomly initialised model "
                        f"keeps random weights fixed: use --weights imagenet (or PATH) or freeze 0")
    if freeze_children and cifar_stem:
        raise UserError("the CIFAR stem's conv1 is freshly initialised, so it cannot be frozen: "
                        "freeze 0 children with the CIFAR stem, or drop the CIFAR stem")


def build_transfer_model(num_classes=10, weights="none", head="linear", freeze_children=0,
                         cifar_stem=False, progress=True):
    """torchvision's resnet18 with weights "none", "imagenet" or a local PATH, a new head,
    optionally the CIFAR stem, and its first `freeze_children` children frozen."""
    weights = "none" if weights is None else os.fspath(weights)
    _check_options(weights, head, freeze_children, cifar_stem)
    model = torchvision.models.resnet18(weights=None)
    if weights == "imagenet":
        _load_backbone(model, load_imagenet_state_dict(progress), f"{imagenet_cache_path()}")
    elif weights != "none":
        _load_backbone(model, load_weights_file(weights), f"weights file {weights}")
    model.fc = make_head(head, num_classes, in_features=model.fc.in_features)
    if cifar_stem:
        use_cifar_stem(model)
    freeze_first_children(model, freeze_children)
    return model


def parameter_groups(model, lr, backbone_lr_mult):
    """Optimizer groups: the head (fc) at lr, other trainable parameters at lr * backbone_lr_mult.

    Frozen parameters are in no group, so weight decay and momentum never touch them.
    """
    head_ids = {id(p) for p in model.fc.parameters()}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    head = [p for _, p in trainable if id(p) in head_ids]
    backbone = [p for _, p in trainable if id(p) not in head_ids]
    groups = []
    if backbone:
        groups.append({"params": backbone, "lr": lr * backbone_lr_mult, "name": "backbone"})
    if head:
        groups.append({"params": head, "lr": lr, "name": "head"})
    return groups


def count_parameters(model):
    """(trainable, total) numbers of parameters."""
    params = list(model.parameters())
    return (sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))
