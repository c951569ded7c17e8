"""The hand-written CIFAR ResNet-18: the report's structure, size and dropout placement."""
import pytest
import torch
import torch.nn as nn

from models import build_model
from models.resnet import BasicBlock, resnet18


def test_parameter_count_matches_the_report():
    assert sum(p.numel() for p in resnet18(num_classes=10).parameters()) == 11_173_962


def test_module_names_follow_the_reports_printout():
    model = resnet18()
    top = [name for name, _ in model.named_children()]
    assert top == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "linear"]
    block = model.layer2[0]
    assert isinstance(block, BasicBlock)
    assert [name for name, _ in block.named_children()] == ["conv1", "bn1", "conv2", "bn2", "shortcut"]
    # The stem is 3x3 stride 1 (no max-pool); projections only where the shape changes.
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert len(model.layer1[0].shortcut) == 0 and len(model.layer2[0].shortcut) == 2
    assert model.layer4[0].conv1.stride == (2, 2) and model.layer4[1].conv1.out_channels == 512
    printed = str(model)
    assert "(shortcut): Sequential(\n        (0): Conv2d(64, 128, kernel_size=(1, 1), stride=(2, 2), bias=False)" in printed
    assert "(linear): Linear(in_features=512, out_features=10, bias=True)" in printed


@pytest.mark.parametrize("classes,width", [(10, 64), (100, 8)])
def test_output_shape(classes, width):
    model = resnet18(num_classes=classes, width=width).eval()
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, classes)


def test_layer4_sees_a_4x4_map_for_32x32_inputs():
    model = resnet18(width=8).eval()
    shapes = {}
    model.layer4.register_forward_hook(lambda module, inputs, output: shapes.update(out=output.shape))
    model(torch.randn(1, 3, 32, 32))
    assert shapes["out"] == (1, 64, 4, 4)


def _dropouts(model):
    return [name for name, module in model.named_modules()
            if isinstance(module, (nn.Dropout, nn.Dropout2d))]


def test_dropout_sits_where_asked():
    assert _dropouts(resnet18(width=8, dropout=0.3, dropout_at=["classifier"])) == ["dropout"]
    assert _dropouts(resnet18(width=8, dropout=0.3, dropout_at=["stage"])) == [
        "layer1.2", "layer2.2", "layer3.2", "layer4.2"]
    inside = _dropouts(resnet18(width=8, dropout=0.3, dropout_at=["block"]))
    assert len(inside) == 8 and all(name.endswith(".dropout") for name in inside)
    both = _dropouts(resnet18(width=8, dropout=0.3, dropout_at=["block", "classifier"]))
    assert len(both) == 9


def test_rate_zero_is_the_plain_network():
    torch.manual_seed(0)
    plain = resnet18(width=8)
    torch.manual_seed(0)
    zero = resnet18(width=8, dropout=0.0, dropout_at=["classifier", "stage", "block"])
    assert _dropouts(zero) == []
    assert str(plain) == str(zero)
    for (name, a), (_, b) in zip(plain.state_dict().items(), zero.state_dict().items()):
        assert torch.equal(a, b), name


def test_eval_output_does_not_depend_on_the_rate():
    torch.manual_seed(0)
    reference = resnet18(width=8).eval()
    x = torch.randn(4, 3, 32, 32)
    for places in (["classifier"], ["stage"], ["block"]):
        model = resnet18(width=8, dropout=0.5, dropout_at=places)
        model.load_state_dict(reference.state_dict())  # dropout has no parameters
        model.eval()
        assert torch.allclose(model(x), reference(x), atol=1e-6)
        model.train()
        assert not torch.allclose(model(x), reference.train()(x), atol=1e-3)
        reference.eval()


def test_unknown_dropout_place_is_refused():
    with pytest.raises(ValueError, match="unknown dropout place"):
        resnet18(dropout=0.1, dropout_at=["everywhere"])


def test_build_model_rebuilds_from_a_spec():
    model = build_model({"name": "resnet18_cifar", "num_classes": 7, "width": 8,
                         "dropout": 0.2, "dropout_at": ["stage"]})
    assert model.linear.out_features == 7 and len(_dropouts(model)) == 4
