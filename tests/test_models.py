"""Every registered architecture goes through forward + backward automatically (timm style)."""

import pytest
import torch

from models.registry import ModelError, create_model, list_models

SHAPES = {"image": (1, 8, 8), "flat": (12,)}


def _input_shape(name):
    return SHAPES["image"]  # all current families accept images; mlp flattens


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_every_architecture(name):
    torch.manual_seed(0)
    net = create_model(name, _input_shape(name), 10)
    x = torch.randn(4, *_input_shape(name))
    out = net(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    net.eval()
    assert net(x[:1]).shape == (1, 10)


def test_mlp_takes_flat_inputs():
    assert create_model("mlp", (12,), 3, hidden=[8])(torch.randn(2, 12)).shape == (2, 3)


def test_cnn_rejects_flat_inputs_with_a_message():
    with pytest.raises(ModelError, match=r"cnn needs image inputs \(C, H, W\)"):
        create_model("cnn", (12,), 3)


def test_cnn_works_at_mnist_size():
    net = create_model("cnn", (1, 28, 28), 10, channels=[8, 16, 32])
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
