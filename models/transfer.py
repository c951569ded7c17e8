"""torchvision's ResNet-18 for part (b): heads ("mlp" = config 1, "deep" = config 2, printed
exactly as in the report by `print(make_head("deep", 10))`), CIFAR stem, freezing (docs/parts.md,
part (b)). Pretrained weights come in as a state dict: reading files is the caller's job.
"""
import torch.nn as nn
import torchvision

from models import state_dict_mismatch

HEADS = ("linear", "mlp", "deep")

# model.children() order of torchvision's ResNet; the report froze the first 7 (up to layer3).
CHILD_NAMES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4",
               "avgpool", "fc")


# ---------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------

def make_head(name, num_classes, in_features=512):
    """The classifier that replaces model.fc: "linear", or the report's config 1 / config 2."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}: choose one of {', '.join(HEADS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
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


def _load_backbone(model, state_dict):
    """Every layer but fc (replaced anyway, so other classes fit), strictly; a ValueError says
    why the dict does not fit."""
    backbone = {key: value for key, value in state_dict.items() if not key.startswith("fc.")}
    expected = {key: value for key, value in model.state_dict().items() if not key.startswith("fc.")}
    problem = state_dict_mismatch(expected, backbone)
    if problem:
        raise ValueError(problem)
    model.load_state_dict(backbone, strict=False)  # exactly the backbone: checked above


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
    """Stays in eval mode whichever module train() is called on; unlike FrozenBatchNorm2d it
    keeps BatchNorm2d's keys, so frozen and unfrozen runs load each other's checkpoints."""

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

def _check_options(freeze_children, cifar_stem):
    # The head is never frozen: with nothing trainable there would be nothing to train.
    most = len(CHILD_NAMES) - 1
    if not 0 <= freeze_children <= most:
        raise ValueError(f"freeze_children must be between 0 and {most} (children "
                         f"{', '.join(CHILD_NAMES)}), got {freeze_children}")
    if freeze_children and cifar_stem:
        raise ValueError("the CIFAR stem's conv1 is freshly initialised, so it cannot be "
                         "frozen: freeze 0 children with the CIFAR stem, or drop the stem")


def build_transfer_model(num_classes=10, head="linear", freeze_children=0, cifar_stem=False,
                         state_dict=None):
    """torchvision's resnet18 with `state_dict`'s backbone (random init without one), a new
    head, optionally the CIFAR stem, and its first `freeze_children` children frozen."""
    _check_options(freeze_children, cifar_stem)
    model = torchvision.models.resnet18(weights=None)
    if state_dict is not None:
        _load_backbone(model, state_dict)
    model.fc = make_head(head, num_classes, in_features=model.fc.in_features)
    if cifar_stem:
        use_cifar_stem(model)
    freeze_first_children(model, freeze_children)
    return model


def parameter_groups(model, lr, backbone_lr_mult):
    """Optimizer groups: fc at lr, the rest at lr * backbone_lr_mult; frozen parameters in
    none, so weight decay and momentum never touch them."""
    head_ids = {id(p) for p in model.fc.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    head = [p for p in trainable if id(p) in head_ids]
    backbone = [p for p in trainable if id(p) not in head_ids]
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
