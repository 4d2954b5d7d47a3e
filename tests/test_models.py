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


@pytest.mark.parametrize("name", list_models())
def test_onnx_export_and_parity_every_architecture(name, tmp_path):
    """Dynamo export with a dynamic batch axis, then ORT == torch at several batch sizes."""
    import numpy as np

    from pipelines.deploy import parity_report
    from pipelines.export import Deployable, export_onnx
    from serving.runtime import make_session

    torch.manual_seed(0)
    shape = list(_input_shape(name))
    model = Deployable(create_model(name, shape, 10), {"kind": "standardize_global", "mean": 4.9, "std": 6.0}, shape)
    info = export_onnx(model.eval(), shape, tmp_path / "m.onnx")
    assert info["input_shape"] == ["batch", *shape]
    X = np.random.default_rng(0).uniform(0, 16, size=(11, *shape)).astype(np.float32)
    report = parity_report(make_session(tmp_path / "m.onnx"), model, X, (1, 4, 11), atol=1e-4)
    assert report["passed"], report
    assert [r["batch_size"] for r in report["by_batch_size"]] == [1, 4, 11]


def test_export_refuses_batch_of_one(tmp_path):
    from pipelines.export import export_onnx

    with pytest.raises(ValueError, match="batch of 1 freezes the batch axis"):
        export_onnx(create_model("mlp", (4,), 2), [4], tmp_path / "m.onnx", example_batch=1)
