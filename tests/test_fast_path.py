"""The fast path computes what the plain path computes.

The project's path (uint8 batch on the device, Normalizer, channels_last model, the loop's
loss) is meant to be a faster way to train the same function as the plain per-image path
most CIFAR code uses (ToTensor + Normalize per PIL image, contiguous model,
nn.CrossEntropyLoss). A speed-up only counts if both train the same function, so here, on
the CPU in fp32, one batch through each path gives the same loss and the same gradient for
every parameter.

Tolerances: fp32 results may differ only by summation order (channels_last convolutions
accumulate in another order than contiguous ones), so loss to 1e-5 relative and each
parameter's gradient to 1e-4 of that gradient's largest magnitude; measured differences are
about 1e-7 and 1e-5. bf16 keeps 8 bits of mantissa, so its loss is checked loosely (2%).
"""
import copy

import pytest
import torch
import torch.nn as nn
import torchvision.transforms as T
from PIL import Image

from engine.device import autocast
from engine.loader import Normalizer, channel_stats
from engine.loop import soft_or_hard_loss
from engine.sources import make_synthetic
from models import build_model

CPU = torch.device("cpu")
LOSS_RTOL = 1e-5        # fp32 vs fp32: summation order only
GRAD_TOL = 1e-4         # of each parameter's largest gradient magnitude
BF16_LOSS_RTOL = 0.02   # bf16 autocast vs fp32: 8-bit mantissa through ~20 layers


@pytest.fixture(scope="module")
def batch():
    """Eight synthetic CIFAR-shaped uint8 images, their labels and the data's statistics."""
    train, _ = make_synthetic(train_size=8, test_size=1)
    return train.images, train.labels, channel_stats(train.images)


def narrow_model(name="resnet18_cifar"):
    torch.manual_seed(0)
    spec = {"name": name, "num_classes": 10}
    if name == "resnet18_cifar":
        spec["width"] = 8
    return build_model(spec)


def fast_inputs(images, stats):
    """The project's path: the whole uint8 batch through the Normalizer, channels_last."""
    return Normalizer(*stats, CPU, channels_last=True)(images)


def plain_inputs(images, stats):
    """The plain path: each image as a PIL image through ToTensor and Normalize, stacked."""
    to_input = T.Compose([T.ToTensor(), T.Normalize(*stats)])
    return torch.stack([to_input(Image.fromarray(image.permute(1, 2, 0).numpy()))
                        for image in images])


def forward_backward(model, inputs, targets, loss_fn, precision="fp32"):
    """One training-mode forward and backward; returns logits, loss and every gradient."""
    model.train()
    with autocast(CPU, precision):
        logits = model(inputs)
    loss = loss_fn(logits, targets)
    loss.backward()
    return logits.detach(), loss.detach(), {name: parameter.grad.clone()
                                            for name, parameter in model.named_parameters()}


def project_loss(logits, targets):
    return soft_or_hard_loss(logits, targets, label_smoothing=0.0)


def assert_gradients_match(got, expected):
    assert got.keys() == expected.keys()
    for name, gradient in expected.items():
        difference = (got[name] - gradient).abs().max().item()
        scale = gradient.abs().max().item()
        assert difference <= GRAD_TOL * scale + 1e-12, f"{name}: {difference:.3g} off {scale:.3g}"


def test_normalizer_gives_the_plain_per_image_inputs(batch):
    images, _, stats = batch
    fast, plain = fast_inputs(images, stats), plain_inputs(images, stats)
    assert fast.is_contiguous(memory_format=torch.channels_last) and plain.is_contiguous()
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-6)


def test_fast_and_plain_paths_give_the_same_loss_and_gradients(batch):
    images, labels, stats = batch
    model = narrow_model()
    fast_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    _, fast_loss, fast_grads = forward_backward(fast_model, fast_inputs(images, stats), labels,
                                                project_loss)
    _, plain_loss, plain_grads = forward_backward(copy.deepcopy(model), plain_inputs(images, stats),
                                                  labels, nn.CrossEntropyLoss())
    torch.testing.assert_close(fast_loss, plain_loss, rtol=LOSS_RTOL, atol=0)
    assert_gradients_match(fast_grads, plain_grads)


@pytest.mark.parametrize("name", ["resnet18_cifar", "torchvision_resnet18"])
def test_channels_last_does_not_change_outputs_or_gradients(batch, name):
    images, labels, stats = batch
    inputs = fast_inputs(images, stats)
    model = narrow_model(name)
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    cl_logits, cl_loss, cl_grads = forward_backward(channels_last, inputs, labels, project_loss)
    logits, loss, grads = forward_backward(copy.deepcopy(model), inputs.contiguous(), labels,
                                           project_loss)
    torch.testing.assert_close(cl_logits, logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cl_loss, loss, rtol=LOSS_RTOL, atol=0)
    assert_gradients_match(cl_grads, grads)


def test_bf16_autocast_loss_is_close_to_fp32(batch):
    """On CUDA the project trains in bf16 autocast; CPU autocast runs the same bf16 casts
    (convolutions and matmuls in bf16, the loss in fp32), so it stands in for the GPU path."""
    images, labels, stats = batch
    inputs = fast_inputs(images, stats)
    model = narrow_model().to(memory_format=torch.channels_last)
    bf16_logits, bf16_loss, _ = forward_backward(copy.deepcopy(model), inputs, labels,
                                                 project_loss, precision="bf16")
    _, fp32_loss, _ = forward_backward(copy.deepcopy(model), inputs, labels, project_loss)
    assert bf16_logits.dtype == torch.bfloat16  # autocast really ran the model in bf16
    assert bf16_loss.dtype == torch.float32     # the loop computes the loss in fp32
    torch.testing.assert_close(bf16_loss, fp32_loss, rtol=BF16_LOSS_RTOL, atol=0)
