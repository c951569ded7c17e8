"""Pretrained weights: read them, and build the model a spec describes with them.

`--weights imagenet` is torchvision's ResNet18_Weights.IMAGENET1K_V1 through its own hub
cache ($TORCH_HOME/hub/checkpoints/), downloaded when missing; `--weights PATH` is a local
state dict, bare or inside the checkpoint layouts of common training code (load_weights_file).
Every file is loaded with weights_only=True, and the cached ImageNet file's
SHA-256 is checked against the prefix in its name on every load: torch.hub checks it only
when it downloads, and a partial copy dropped into the cache would spoil every pretrained run.
"""
import argparse
import hashlib
import http.client
import urllib.parse
from pathlib import Path

import torch
import torchvision

from engine.checkpoint import one_line, safe_load
from engine.errors import UserError
from models import build_model, state_dict_mismatch

# Module-level so that tests can put a stand-in here: the real file name carries the real
# file's hash prefix, which a generated file cannot match.
IMAGENET_WEIGHTS = torchvision.models.ResNet18_Weights.IMAGENET1K_V1

# Where common training code keeps the weights in its checkpoints: this project and torchvision's
# references ("model"), PyTorch Lightning ("state_dict"), kuangliu/pytorch-cifar ("net").
CHECKPOINT_KEYS = ("model", "state_dict", "net")
# Prefixes that wrappers put before every key: DataParallel/DDP ("module."), torch.compile
# ("_orig_mod."), a Lightning module holding the network as self.model or self.net.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "net.")


def imagenet_cache_path():
    """Where torch.hub keeps the file: torch.hub.get_dir() reads TORCH_HOME at call time."""
    file_name = Path(urllib.parse.urlparse(IMAGENET_WEIGHTS.url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def check_hash_prefix(path):
    """Refuse a file whose SHA-256 does not start with the `-<prefix>.` in its name."""
    expected = torch.hub.HASH_REGEX.search(path.name).group(1)
    digest = hashlib.sha256()  # (hashlib.file_digest needs Python 3.11; the README requires 3.10)
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    actual = digest.hexdigest()
    if not actual.startswith(expected):
        raise UserError(
            f"{path} is not the expected ImageNet ResNet-18 file: its SHA-256 starts with "
            f"{actual[:len(expected)]}, expected {expected}; delete it so that it is "
            f"downloaded again, or pass --weights PATH"
        )


def load_imagenet(progress=True):
    """The verified hub-cache file, else torchvision's download into the cache, else UserError."""
    path = imagenet_cache_path()
    if path.is_file():
        check_hash_prefix(path)
    try:
        # check_hash=True: torch.hub verifies a download against the name's prefix.
        return IMAGENET_WEIGHTS.get_state_dict(progress=progress, check_hash=True,
                                               map_location="cpu", weights_only=True)
    except (OSError, http.client.HTTPException) as error:  # URLError, timeouts, SSL, disk
        raise UserError(
            f"ImageNet weights not found at {path} and cannot be downloaded "
            f"({one_line(error)[:200]}): put {path.name} there (from {IMAGENET_WEIGHTS.url}; "
            f"TORCH_HOME defaults to ~/.cache/torch), or pass --weights PATH"
        ) from None
    except RuntimeError as error:  # torch.hub's "invalid hash value", or an unreadable download
        raise UserError(
            f"downloaded ImageNet weights to {path} but could not use them "
            f"({one_line(error)[:200]}): delete any partial {path.name} and retry, "
            f"or pass --weights PATH"
        ) from None


def _is_state_dict(obj):
    return (isinstance(obj, dict) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def _strip_wrapper_prefixes(state_dict):
    """Keys saved from wrappers (in any nesting, e.g. module._orig_mod.) as the bare model's: a
    prefix is removed only where every key has it."""
    while True:
        prefix = next((prefix for prefix in WRAPPER_PREFIXES
                       if all(key.startswith(prefix) for key in state_dict)), None)
        if prefix is None:
            return state_dict
        state_dict = {key[len(prefix):]: value for key, value in state_dict.items()}


def load_weights_file(path):
    """A state dict from a local file: a bare one, or a checkpoint's under one of
    CHECKPOINT_KEYS, its keys without wrapper prefixes."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist: pass --weights PATH of a resnet18 "
                        f"state dict saved with torch.save")
    # torchvision's references save their argparse.Namespace ("args") beside the weights: plain
    # data (unpickling sets its attributes, no code of the file's choosing runs), allowed here.
    with torch.serialization.safe_globals([argparse.Namespace]):
        loaded = safe_load(path, f"weights file {path}", "pass --weights PATH of a state dict "
                           "saved with torch.save(model.state_dict(), PATH)")
    for key in CHECKPOINT_KEYS:  # a training checkpoint holding the model's state dict
        if isinstance(loaded, dict) and _is_state_dict(loaded.get(key)):
            loaded = loaded[key]
            break
    if not _is_state_dict(loaded):
        found = (f"a dict with keys {', '.join(map(str, list(loaded)[:6]))}"
                 if isinstance(loaded, dict) else f"a {type(loaded).__name__}")
        raise UserError(f"weights file {path} does not hold a state dict (it holds {found}; "
                        f"expected a dict of name -> tensor, or a checkpoint with one under "
                        f"{', '.join(repr(key) for key in CHECKPOINT_KEYS)}): pass --weights "
                        f"PATH of a file saved with torch.save(model.state_dict(), PATH)")
    return _strip_wrapper_prefixes(loaded)


def load_into(model, state_dict, source, model_name, fix):
    """model.load_state_dict(state_dict) with every key, or a one-line UserError:
    "<source> does not fit <model_name> (what differs): <fix>"."""
    problem = state_dict_mismatch(model.state_dict(), state_dict)
    if problem:
        raise UserError(f"{source} does not fit {model_name} ({problem}): {fix}")
    model.load_state_dict(state_dict, strict=True)
    return model


def load_weights(weights, progress=True):
    """The state dict `--weights` names: "imagenet" or a PATH."""
    return load_imagenet(progress) if weights == "imagenet" else load_weights_file(weights)


def model_from_spec(spec, progress=True):
    """The model a spec describes, with the pretrained weights its "weights" names, if any."""
    weights = str(spec.get("weights", "none"))
    if weights == "none":
        # Here, not in build_model: a trained run is rebuilt frozen without its pretrained file.
        if spec.get("freeze_children"):
            raise ValueError("freezing children of a randomly initialised model keeps random "
                             "weights fixed: name pretrained weights, or freeze 0")
        return build_model(spec)
    state_dict = load_weights(weights, progress)
    try:
        return build_model(spec, state_dict)
    except ValueError as error:  # the file's keys or shapes (the options are the script's own)
        source = imagenet_cache_path() if weights == "imagenet" else f"weights file {weights}"
        raise UserError(f"{source} does not fit torchvision's resnet18 ({one_line(error)}): pass "
                        f"--weights PATH of a torchvision resnet18 state dict (with ImageNet's "
                        f"7x7 stem), or --weights imagenet") from None
