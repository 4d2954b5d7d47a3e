"""resnet_small: registry entry, kwargs errors naming params keys, any image size, ONNX round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.registry import ModelError, create_model, list_models

TINY = {"channels": [8, 16, 32], "dropout": 0.0}


def test_registered_next_to_cnn():
    assert {"cnn", "resnet_small"} <= set(list_models())


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 64, 64), (3, 37, 50), (1, 9, 120)])
def test_forward_backward_any_size(shape):
    torch.manual_seed(0)
    net = create_model("resnet_small", shape, 7)
    x = torch.randn(3, *shape)
    out = net(x)
    assert out.shape == (3, 7) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert net.eval()(x[:1]).shape == (1, 7)


def test_default_is_modest_and_downsamples_between_stages():
    net = create_model("resnet_small", (3, 64, 64), 10)
    assert sum(p.numel() for p in net.parameters()) < 1_000_000
    assert sum(p.numel() for p in create_model("resnet_small", (3, 64, 64), 10, blocks=2).parameters()) < 1_000_000
    feats = net.stages(net.stem(torch.randn(1, 3, 64, 64)))
    assert feats.shape == (1, 128, 16, 16)  # 64 -> 32 -> 16: stride 2 before stages 2 and 3
    strided = create_model("resnet_small", (3, 64, 64), 10, stem_stride=2)
    assert strided.stages(strided.stem(torch.randn(1, 3, 64, 64))).shape == (1, 128, 8, 8)


def test_tiny_images_keep_a_map_of_at_least_2x2():
    net = create_model("resnet_small", (1, 8, 8), 10, channels=[8, 8, 8, 8, 8])
    assert net.stages(net.stem(torch.randn(1, 1, 8, 8))).shape[-2:] == (2, 2)


def test_refuses_flat_inputs_naming_model_name():
    with pytest.raises(ModelError, match=r"^model\.name: 'resnet_small' cannot take this data: .*needs image inputs"):
        create_model("resnet_small", (12,), 3)


@pytest.mark.parametrize("kwargs,key", [
    ({"channels": []}, "channels"), ({"channels": [8, 0]}, "channels"), ({"channels": "32"}, "channels"),
    ({"blocks": 0}, "blocks"), ({"blocks": 1.5}, "blocks"), ({"dropout": 1.0}, "dropout"),
    ({"dropout": "x"}, "dropout"), ({"stem_stride": 3}, "stem_stride"),
])
def test_bad_kwargs_name_the_params_key(kwargs, key):
    with pytest.raises(ModelError, match=rf"model\.kwargs\.{key}"):
        create_model("resnet_small", (1, 8, 8), 3, **kwargs)


def test_unknown_kwarg_names_the_params_key():
    with pytest.raises(ModelError, match=r"model\.kwargs\.width: 'resnet_small' takes no such argument"):
        create_model("resnet_small", (1, 8, 8), 3, width=4)


def _trained_stats(net: torch.nn.Module, shape: tuple[int, ...]) -> torch.nn.Module:
    """A few train-mode passes so BatchNorm's running statistics are not the identity."""
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(8, *shape) * 2 + 0.5)
    return net.eval()


@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 64, 64)])
def test_onnx_export_dynamic_batch_matches_torch(shape, tmp_path: Path):
    import onnxruntime as ort

    from pipelines.export import INPUT_NAME, export_onnx

    torch.manual_seed(0)
    net = _trained_stats(create_model("resnet_small", shape, 5, **TINY), shape)
    info = export_onnx(net, list(shape), tmp_path / "m.onnx")
    assert info["input_shape"] == ["batch", *shape]
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = np.random.default_rng(batch).normal(size=(batch, *shape)).astype(np.float32)
        with torch.no_grad():
            expected = net(torch.from_numpy(x)).numpy()
        got = session.run(None, {INPUT_NAME: x})[0]
        assert got.shape == (batch, 5)
        assert np.abs(got - expected).max() < 1e-4
