"""models/transfer.py: heads as printed in the report, freezing, CIFAR stem, weight loading.

No network: ImageNet weights are stood in for by a random resnet18 state dict saved in the
hub-cache layout, and the downloader is replaced by one that fails like an offline machine.
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

from engine.errors import UserError
from models import transfer

# The two heads exactly as the report prints them (its config 2 typo "in features" included).
REPORT_CONFIG_1 = """
(fc): Sequential(
    (0): Linear(in_features=512, out_features=128, bias=True)
    (1): ReLU()
    (2): Dropout(p=0.3, inplace=False)
    (3): Linear(in_features=128, out_features=10, bias=True)
)
"""
REPORT_CONFIG_2 = """
(fc): Sequential(
   (0): Linear(in features=512, out features=256, bias=True)
   (1): ReLU()
   (2): Dropout(p=0.2, inplace=False)
   (3): Linear(in features=256, out features=128, bias=True)
   (4): ReLU()
   (5): Dropout(p=0.2, inplace=False)
   (6): Linear(in features=128, out features=128, bias=True)
   (7): ReLU()
    (8): Dropout(p=0.2, inplace=False)
   (9): Linear(in features=128, out features=64, bias=True)
   (10): ReLU()
   (11): Dropout(p=0.2, inplace=False)
   (12): Linear(in features=64, out features=32, bias=True)
   (13): ReLU()
   (14): Linear(in features=32, out features=10, bias=True)
 )
"""

# (type, in_features, out_features) for Linear, (type, p) for Dropout, (type,) for ReLU.
EXPECTED_LAYERS = {
    "mlp": [("Linear", 512, 128), ("ReLU",), ("Dropout", 0.3), ("Linear", 128, 10)],
    "deep": [("Linear", 512, 256), ("ReLU",), ("Dropout", 0.2),
             ("Linear", 256, 128), ("ReLU",), ("Dropout", 0.2),
             ("Linear", 128, 128), ("ReLU",), ("Dropout", 0.2),
             ("Linear", 128, 64), ("ReLU",), ("Dropout", 0.2),
             ("Linear", 64, 32), ("ReLU",),
             ("Linear", 32, 10)],
}


def describe(layer):
    if isinstance(layer, nn.Linear):
        return ("Linear", layer.in_features, layer.out_features)
    if isinstance(layer, nn.Dropout):
        return ("Dropout", layer.p)
    return (type(layer).__name__,)


def normalise_printout(text):
    return [" ".join(line.split()).replace("in features", "in_features")
            .replace("out features", "out_features") for line in text.strip().splitlines()]


def random_resnet18_bytes(seed=0):
    """A resnet18 state dict serialised in memory, so its SHA-256 is known before it is named."""
    torch.manual_seed(seed)
    buffer = io.BytesIO()
    torch.save(torchvision.models.resnet18().state_dict(), buffer)
    return buffer.getvalue()


def save_resnet18(path, seed=0):
    path.write_bytes(random_resnet18_bytes(seed))
    return torch.load(path, weights_only=True)


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


@pytest.fixture(scope="module")
def pretrained_file(tmp_path_factory):
    """One weights file for the tests that need some pretrained resnet18, not particular values."""
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    save_resnet18(path)
    return path


def frozen_state(model, names):
    return {f"{child}.{key}": value.clone()
            for child in names for key, value in getattr(model, child).state_dict().items()}


# --- heads ------------------------------------------------------------------------------

@pytest.mark.parametrize("head", ["mlp", "deep"])
def test_head_layers_match_report_index_by_index(head):
    layers = list(transfer.make_head(head, 10))
    assert [describe(layer) for layer in layers] == EXPECTED_LAYERS[head]


@pytest.mark.parametrize("head, printout", [("mlp", REPORT_CONFIG_1), ("deep", REPORT_CONFIG_2)])
def test_head_printout_matches_report(head, printout):
    model = transfer.build_transfer_model(head=head)
    ours = str(model).splitlines()
    start = next(i for i, line in enumerate(ours) if line.strip().startswith("(fc): Sequential("))
    ours = ours[start:start + len(normalise_printout(printout))]
    assert normalise_printout("\n".join(ours)) == normalise_printout(printout)


def test_linear_head_and_class_count():
    assert describe(transfer.make_head("linear", 100)) == ("Linear", 512, 100)
    assert transfer.make_head("deep", 7)[-1].out_features == 7
    with pytest.raises(UserError, match="linear, mlp, deep"):
        transfer.make_head("resnet", 10)


# --- freezing ---------------------------------------------------------------------------

def test_frozen_children_and_their_batchnorm_statistics_do_not_change(tmp_path):
    weights = tmp_path / "resnet18.pth"
    save_resnet18(weights)
    model = transfer.build_transfer_model(weights=weights, head="mlp", freeze_children=7)
    frozen_names = transfer.CHILD_NAMES[:7]
    before_frozen = frozen_state(model, frozen_names)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    layer4_mean = model.layer4[0].bn1.running_mean.clone()

    optimizer = torch.optim.SGD(transfer.parameter_groups(model, lr=0.1, backbone_lr_mult=1.0))
    model.train()
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        images = torch.randn(4, 3, 32, 32, generator=generator)
        labels = torch.randint(0, 10, (4,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    after_frozen = frozen_state(model, frozen_names)
    assert any(key.endswith("num_batches_tracked") for key in before_frozen)
    for key, value in before_frozen.items():
        assert torch.equal(value, after_frozen[key]), key
    for name, param in model.named_parameters():
        if name.split(".")[0] in frozen_names:
            assert not param.requires_grad, name
    for name, value in trainable.items():
        assert not torch.equal(value, dict(model.named_parameters())[name]), name
    assert set(n.split(".")[0] for n in trainable) == {"layer4", "fc"}
    assert not torch.equal(layer4_mean, model.layer4[0].bn1.running_mean)  # not frozen: learns


def test_frozen_batchnorm_ignores_train_from_any_level(pretrained_file):
    model = transfer.build_transfer_model(weights=pretrained_file, freeze_children=7)
    model.train()
    model.layer1.train()  # a call on a sub-module must not switch it back either
    batchnorms = {name: module.training for name, module in model.named_modules()
                  if isinstance(module, nn.BatchNorm2d)}
    assert batchnorms["bn1"] is False and batchnorms["layer3.1.bn2"] is False
    assert batchnorms["layer1.0.bn1"] is False
    assert batchnorms["layer4.0.bn1"] is True
    # Same keys as an unfrozen model, so checkpoints load either way.
    assert model.state_dict().keys() == transfer.build_transfer_model().state_dict().keys()


def test_freezing_options_out_of_range_are_refused(pretrained_file):
    with pytest.raises(UserError, match="between 0 and 9"):
        transfer.build_transfer_model(weights=pretrained_file, freeze_children=10)
    with pytest.raises(UserError, match="randomly initialised"):
        transfer.build_transfer_model(weights="none", freeze_children=7)
    with pytest.raises(UserError, match="CIFAR stem"):
        transfer.build_transfer_model(weights=pretrained_file, freeze_children=7,
                                      cifar_stem=True)
    with pytest.raises(UserError, match="unknown head"):
        transfer.build_transfer_model(head="big")


# --- CIFAR stem -------------------------------------------------------------------------

def layer4_output_shapes(model, images):
    shapes = []
    handle = model.layer4.register_forward_hook(lambda m, i, out: shapes.append(out.shape))
    with torch.no_grad():
        logits = model.eval()(images)
    handle.remove()
    return tuple(logits.shape), tuple(shapes[0])


def test_cifar_stem_keeps_pretrained_layers_and_sees_4x4(tmp_path):
    weights = tmp_path / "resnet18.pth"
    loaded = save_resnet18(weights)
    cifar = transfer.build_transfer_model(weights=weights, cifar_stem=True)
    imagenet = transfer.build_transfer_model(weights=weights)

    ours = cifar.state_dict()
    for key, value in loaded.items():
        if key.startswith(("conv1.", "fc.")):
            continue
        assert torch.equal(ours[key], value), key
    assert ours["conv1.weight"].shape == (64, 3, 3, 3)
    assert isinstance(cifar.maxpool, nn.Identity)
    # Fresh init as torchvision's: kaiming normal, fan_out, std sqrt(2 / (64 * 3 * 3)).
    assert abs(ours["conv1.weight"].std().item() / (2 / (64 * 9)) ** 0.5 - 1) < 0.15

    images = torch.randn(2, 3, 32, 32)
    logits, layer4 = layer4_output_shapes(cifar, images)
    assert logits == (2, 10) and layer4 == (2, 512, 4, 4)
    logits, layer4 = layer4_output_shapes(imagenet, images)
    assert logits == (2, 10) and layer4 == (2, 512, 1, 1)


# --- ImageNet weights in the hub cache --------------------------------------------------

def test_imagenet_cache_path_follows_torch_home(torch_home):
    expected = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert transfer.imagenet_cache_path() == expected
    assert transfer.imagenet_file_name() == "resnet18-f37072fd.pth"
    assert transfer.IMAGENET_URL == torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url


def test_imagenet_weights_load_from_hub_cache(torch_home, monkeypatch):
    data = random_resnet18_bytes(seed=1)
    prefix = hashlib.sha256(data).hexdigest()[:8]
    monkeypatch.setattr(transfer, "IMAGENET_URL",
                        f"https://download.pytorch.org/models/resnet18-{prefix}.pth")
    cached = torch_home / "hub" / "checkpoints" / f"resnet18-{prefix}.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(data)
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k) or real_load(*a, **k))

    model = transfer.build_transfer_model(weights="imagenet", head="mlp")

    assert loads and all(k.get("weights_only") is True for k in loads)
    saved = real_load(io.BytesIO(data), weights_only=True)
    ours = model.state_dict()
    for key, value in saved.items():
        if not key.startswith("fc."):
            assert torch.equal(ours[key], value), key


def test_imagenet_cache_file_with_wrong_hash_is_refused_unloaded(torch_home, monkeypatch):
    cached = transfer.imagenet_cache_path()  # the real name: resnet18-f37072fd.pth
    cached.parent.mkdir(parents=True)
    cached.write_bytes(random_resnet18_bytes())
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("loaded an unverified file"))
    with pytest.raises(UserError) as error:
        transfer.build_transfer_model(weights="imagenet")
    message = str(error.value)
    assert str(cached) in message and "f37072fd" in message and "delete" in message
    assert "--weights" in message


def test_verify_hash_prefix(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"abc")
    digest = hashlib.sha256(b"abc").hexdigest()
    transfer.verify_hash_prefix(path, digest[:8])
    with pytest.raises(UserError, match=digest[:8]):
        transfer.verify_hash_prefix(path, "00000000")
    assert transfer.expected_hash_prefix("resnet18-f37072fd.pth") == "f37072fd"


def test_offline_without_cached_weights_names_path_and_fix(torch_home):
    with pytest.raises(UserError) as error:
        transfer.build_transfer_model(weights="imagenet", progress=False)
    message = str(error.value)
    expected = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert str(expected) in message
    assert "resnet18-f37072fd.pth" in message and "--weights" in message
    assert "\n" not in message
    assert not expected.exists()


# --- local weights files ----------------------------------------------------------------

def test_weights_file_of_another_model_names_keys(tmp_path):
    path = tmp_path / "linear.pth"
    torch.save(nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(UserError) as error:
        transfer.build_transfer_model(weights=path)
    message = str(error.value)
    assert str(path) in message
    assert "missing keys" in message and "conv1.weight" in message
    assert "unexpected keys" in message and "weight" in message.split("unexpected keys")[1]
    assert "\n" not in message


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
        transfer.build_transfer_model(weights=path)
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
            transfer.load_weights_file(path)
        assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_checkpoint_with_model_key_is_accepted(tmp_path):
    path = tmp_path / "checkpoint.pt"
    state = torchvision.models.resnet18().state_dict()
    torch.save({"model": state, "epoch": 3}, path)
    loaded = transfer.load_weights_file(path)
    assert loaded.keys() == state.keys()


# --- optimizer groups, counts -----------------------------------------------------------

def test_parameter_groups_head_backbone_and_frozen(pretrained_file):
    model = transfer.build_transfer_model(weights=pretrained_file, head="mlp",
                                          freeze_children=7)
    groups = transfer.parameter_groups(model, lr=0.1, backbone_lr_mult=0.01)
    by_name = {group["name"]: group for group in groups}
    assert by_name["head"]["lr"] == 0.1
    assert by_name["backbone"]["lr"] == pytest.approx(0.001)
    assert {id(p) for p in by_name["head"]["params"]} == {id(p) for p in model.fc.parameters()}
    assert {id(p) for p in by_name["backbone"]["params"]} == \
        {id(p) for p in model.layer4.parameters()}
    grouped = {id(p) for group in groups for p in group["params"]}
    for name, param in model.named_parameters():
        assert (id(param) in grouped) == param.requires_grad, name

    trainable, total = transfer.count_parameters(model)
    assert total == sum(p.numel() for p in model.parameters())
    assert trainable == sum(p.numel() for p in model.layer4.parameters()) + \
        sum(p.numel() for p in model.fc.parameters())


def test_unfrozen_model_counts_and_groups():
    model = transfer.build_transfer_model(num_classes=10)
    assert transfer.count_parameters(model) == (11_181_642, 11_181_642)
    groups = transfer.parameter_groups(model, lr=0.1, backbone_lr_mult=1.0)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
