"""models/transfer.py: heads as printed in the report, freezing, CIFAR stem, loading a
backbone from a state dict (reading weight files is engine/pretrained.py's: test_pretrained.py).
Pretrained weights are stood in for by a random resnet18 state dict.
"""
import pytest
import torch
import torch.nn as nn
import torchvision

from models import build_model, transfer

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


def random_resnet18(seed=0):
    torch.manual_seed(seed)
    return torchvision.models.resnet18().state_dict()


@pytest.fixture(scope="module")
def pretrained():
    """One state dict for the tests that need some pretrained resnet18, not particular values."""
    return random_resnet18()


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
    with pytest.raises(ValueError, match="linear, mlp, deep"):
        transfer.make_head("resnet", 10)


# --- freezing ---------------------------------------------------------------------------

def test_frozen_children_and_their_batchnorm_statistics_do_not_change(pretrained):
    model = transfer.build_transfer_model(head="mlp", freeze_children=7, state_dict=pretrained)
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


def test_frozen_batchnorm_ignores_train_from_any_level(pretrained):
    model = transfer.build_transfer_model(freeze_children=7, state_dict=pretrained)
    model.train()
    model.layer1.train()  # a call on a sub-module must not switch it back either
    batchnorms = {name: module.training for name, module in model.named_modules()
                  if isinstance(module, nn.BatchNorm2d)}
    assert batchnorms["bn1"] is False and batchnorms["layer3.1.bn2"] is False
    assert batchnorms["layer1.0.bn1"] is False
    assert batchnorms["layer4.0.bn1"] is True
    # Same keys as an unfrozen model, so checkpoints load either way.
    assert model.state_dict().keys() == transfer.build_transfer_model().state_dict().keys()


def test_options_out_of_range_are_refused(pretrained):
    with pytest.raises(ValueError, match="between 0 and 9"):
        transfer.build_transfer_model(freeze_children=10, state_dict=pretrained)
    with pytest.raises(ValueError, match="CIFAR stem"):
        transfer.build_transfer_model(freeze_children=7, cifar_stem=True, state_dict=pretrained)
    with pytest.raises(ValueError, match="unknown head"):
        transfer.build_transfer_model(head="big")


def test_a_spec_naming_weights_builds_the_same_architecture_without_them():
    """For a trained run's checkpoint: frozen layers and state-dict keys as trained."""
    spec = {"name": "torchvision_resnet18", "num_classes": 3, "weights": "imagenet",
            "head": "mlp", "freeze_children": 7}
    model = build_model(spec)
    assert isinstance(model.layer3[1].bn2, transfer.EvalModeBatchNorm2d)
    assert not model.layer3[1].conv2.weight.requires_grad
    assert model.layer4[0].conv1.weight.requires_grad
    unfrozen = transfer.build_transfer_model(3, head="mlp")
    assert model.state_dict().keys() == unfrozen.state_dict().keys()


def test_a_state_dict_of_another_model_is_refused_with_its_keys_or_shapes():
    with pytest.raises(ValueError) as error:
        transfer.build_transfer_model(state_dict=nn.Linear(3, 2).state_dict())
    message = str(error.value)
    assert "missing keys conv1.weight" in message
    assert "unexpected keys weight, bias" in message and "\n" not in message
    cifar_stem = transfer.build_transfer_model(cifar_stem=True).state_dict()
    with pytest.raises(ValueError, match=r"shapes differ for conv1.weight \(64, 3, 3, 3\)"):
        transfer.build_transfer_model(state_dict=cifar_stem)
    # Only the head may differ: it is replaced anyway.
    other_head = transfer.build_transfer_model(num_classes=7, head="mlp").state_dict()
    transfer.build_transfer_model(num_classes=10, state_dict=other_head)


# --- CIFAR stem -------------------------------------------------------------------------

def layer4_output_shapes(model, images):
    shapes = []
    handle = model.layer4.register_forward_hook(lambda m, i, out: shapes.append(out.shape))
    with torch.no_grad():
        logits = model.eval()(images)
    handle.remove()
    return tuple(logits.shape), tuple(shapes[0])


def test_cifar_stem_keeps_pretrained_layers_and_sees_4x4():
    loaded = random_resnet18()
    cifar = transfer.build_transfer_model(cifar_stem=True, state_dict=loaded)
    imagenet = transfer.build_transfer_model(state_dict=loaded)

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


# --- optimizer groups, counts -----------------------------------------------------------

def test_parameter_groups_head_backbone_and_frozen(pretrained):
    model = transfer.build_transfer_model(head="mlp", freeze_children=7, state_dict=pretrained)
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
