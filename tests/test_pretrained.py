"""engine/pretrained.py: ImageNet weights through torchvision's hub cache (hash checked on every
load), local weights files, and a spec's model built with its weights.

No network: ImageNet's file is stood in for by a random resnet18 state dict named like a hub
file (conftest.use_stand_in_imagenet); downloads fail like an offline machine, or come from a
file:// URL through torch.hub's real downloader.
"""
import hashlib
import io
import pathlib
import pickle
import urllib.error

import pytest
import torch
import torch.nn as nn
import torchvision

from conftest import use_stand_in_imagenet
from engine import pretrained
from engine.errors import UserError

IMAGENET_SPEC = {"name": "torchvision_resnet18", "num_classes": 10, "weights": "imagenet",
                 "head": "mlp"}


def random_resnet18_bytes(seed=0):
    """A resnet18 state dict serialised in memory, so its SHA-256 is known before it is named."""
    torch.manual_seed(seed)
    buffer = io.BytesIO()
    torch.save(torchvision.models.resnet18().state_dict(), buffer)
    return buffer.getvalue()


def assert_backbone_is(model, data):
    saved = torch.load(io.BytesIO(data), weights_only=True)
    ours = model.state_dict()
    for key, value in saved.items():
        if not key.startswith("fc."):
            assert torch.equal(ours[key], value), key


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME, no hub dir override, and a downloader that fails like no network."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return home


# --- ImageNet weights in the hub cache --------------------------------------------------

def test_imagenet_cache_path_follows_torch_home(torch_home):
    expected = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert pretrained.imagenet_cache_path() == expected
    assert pretrained.IMAGENET_WEIGHTS is torchvision.models.ResNet18_Weights.IMAGENET1K_V1


def test_imagenet_weights_load_from_hub_cache(torch_home, monkeypatch):
    data = random_resnet18_bytes(seed=1)
    cached = use_stand_in_imagenet(monkeypatch, data)
    assert cached.parent == torch_home / "hub" / "checkpoints"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(data)
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k) or real_load(*a, **k))

    model = pretrained.model_from_spec(IMAGENET_SPEC)

    assert loads and all(k.get("weights_only") is True for k in loads)
    assert_backbone_is(model, data)


def test_imagenet_cache_file_with_wrong_hash_is_refused_unloaded(torch_home, monkeypatch):
    cached = pretrained.imagenet_cache_path()  # the real name: resnet18-f37072fd.pth
    cached.parent.mkdir(parents=True)
    cached.write_bytes(random_resnet18_bytes())
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("loaded an unverified file"))
    with pytest.raises(UserError) as error:
        pretrained.model_from_spec(IMAGENET_SPEC)
    message = str(error.value)
    assert str(cached) in message and "f37072fd" in message and "delete" in message
    assert "--weights" in message


def test_check_hash_prefix(tmp_path):
    digest = hashlib.sha256(b"abc").hexdigest()
    good, bad = tmp_path / f"file-{digest[:8]}.bin", tmp_path / "file-00000000.bin"
    good.write_bytes(b"abc")
    bad.write_bytes(b"abc")
    pretrained.check_hash_prefix(good)
    with pytest.raises(UserError, match=f"starts with {digest[:8]}, expected 00000000"):
        pretrained.check_hash_prefix(bad)


def test_offline_without_cached_weights_names_path_and_fix(torch_home):
    with pytest.raises(UserError) as error:
        pretrained.model_from_spec(IMAGENET_SPEC, progress=False)
    message = str(error.value)
    expected = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert str(expected) in message
    assert "resnet18-f37072fd.pth" in message and "--weights" in message
    assert "\n" not in message
    assert not expected.exists()


@pytest.fixture
def served(tmp_path, monkeypatch):
    """An empty TORCH_HOME whose ImageNet file torch.hub downloads from a file:// URL."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    server = tmp_path / "server"
    server.mkdir()

    def serve(data, contents=None):
        cached = use_stand_in_imagenet(monkeypatch, data, base_url=server.as_uri())
        (server / cached.name).write_bytes(data if contents is None else contents)
        return cached

    return serve


def test_a_missing_file_is_downloaded_into_the_cache(served):
    data = random_resnet18_bytes(seed=2)
    cached = served(data)
    model = pretrained.model_from_spec(IMAGENET_SPEC, progress=False)
    assert_backbone_is(model, data)
    assert cached.read_bytes() == data


def test_a_download_that_does_not_match_its_hash_is_refused_and_not_kept(served):
    cached = served(random_resnet18_bytes(seed=2), contents=random_resnet18_bytes(seed=3))
    with pytest.raises(UserError) as error:
        pretrained.model_from_spec(IMAGENET_SPEC, progress=False)
    message = str(error.value)
    assert str(cached) in message and "invalid hash value" in message and "\n" not in message
    assert not cached.exists()


# --- local weights files ----------------------------------------------------------------

def test_weights_file_of_another_model_names_keys(tmp_path):
    path = tmp_path / "linear.pth"
    torch.save(nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(UserError) as error:
        pretrained.model_from_spec({**IMAGENET_SPEC, "weights": str(path)})
    message = str(error.value)
    assert str(path) in message
    assert "missing keys" in message and "conv1.weight" in message
    assert "unexpected keys" in message and "weight" in message.split("unexpected keys")[1]
    assert "--weights PATH" in message and "\n" not in message


class RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_weights_file_that_pickles_code_is_refused_and_not_run(tmp_path):
    path, marker = tmp_path / "evil.pth", tmp_path / "marker"
    torch.save({"conv1.weight": torch.zeros(1), "payload": RunsCodeWhenUnpickled(marker)}, path)
    # The payload is real: plain unpickling would create the file.
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(RunsCodeWhenUnpickled(proof)))
    assert proof.exists()

    with pytest.raises(UserError) as error:
        pretrained.model_from_spec({**IMAGENET_SPEC, "weights": str(path)})
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert "\x1b" not in str(error.value)
    assert not marker.exists()


def test_truncated_missing_and_non_state_dict_files_are_refused(tmp_path):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(random_resnet18_bytes()[:100_000])
    not_a_state_dict = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_a_state_dict)
    for path in (truncated, tmp_path / "missing.pth", not_a_state_dict):
        with pytest.raises(UserError) as error:
            pretrained.load_weights_file(path)
        assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_checkpoint_with_model_key_is_accepted(tmp_path):
    path = tmp_path / "checkpoint.pt"
    state = torchvision.models.resnet18().state_dict()
    torch.save({"model": state, "epoch": 3}, path)
    loaded = pretrained.load_weights_file(path)
    assert loaded.keys() == state.keys()


def test_frozen_random_weights_are_refused():
    spec = {"name": "torchvision_resnet18", "weights": "none", "freeze_children": 7}
    with pytest.raises(ValueError, match="randomly initialised"):
        pretrained.model_from_spec(spec)


def test_ddp_and_compile_prefixes_are_stripped(tmp_path):
    path = tmp_path / "wrapped.pt"
    state = torchvision.models.resnet18().state_dict()
    torch.save({"state_dict": {f"module._orig_mod.{key}": value for key, value in state.items()}},
               path)
    assert pretrained.load_weights_file(path).keys() == state.keys()
    model = pretrained.model_from_spec({**IMAGENET_SPEC, "weights": str(path)})
    assert torch.equal(model.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
