"""The autoencoder families' protocol (models/autoencoder.py): code, per-part errors, input noise, and
what the anomaly/embedding tasks build on it (one training step lowers the error; ONNX export of the
error and code heads with parity). The tasks themselves: tests/test_contracts.py, the service:
tests/test_serving_unsupervised.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.registry import create_model

CASES = {  # arch -> (input shape, cardinalities of the trailing categorical columns)
    "tab_autoencoder": ((5,), [3, 4]),
    "autoencoder": ((1, 8, 8), []),
    "conv_autoencoder": ((3, 16, 16), []),
}


def _batch(shape: tuple[int, ...], cards: list[int], n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=g)
    for j, card in enumerate(cards):  # category indices (0: unknown) in the last columns
        x[:, shape[0] - len(cards) + j] = torch.randint(0, card + 1, (n,), generator=g).float()
    return x


def _net(arch: str) -> torch.nn.Module:
    shape, cards = CASES[arch]
    extra = {"data_args": {"cardinalities": cards}} if cards else {}
    torch.manual_seed(0)
    return create_model(arch, shape, 1, latent=3, **extra)


@pytest.mark.parametrize("arch", list(CASES))
def test_code_errors_and_kind(arch: str) -> None:
    shape, cards = CASES[arch]
    net, x = _net(arch).eval(), _batch(*CASES[arch])
    assert net.kind == "autoencoder" and net.latent == 3
    with torch.no_grad():
        code, errors = net.encode(x), net.errors(x)
    assert code.shape == (len(x), 3)
    assert errors.shape == (len(x), net.error_parts) and (errors >= 0).all() and torch.isfinite(errors).all()
    if arch == "tab_autoencoder":
        assert net.error_parts == shape[0]  # one part per raw column: top columns explain a flag
    with torch.no_grad():  # a row's error does not depend on the other rows of the batch
        assert torch.allclose(net.errors(x[:2]), errors[:2], atol=1e-6)


@pytest.mark.parametrize("arch", list(CASES))
def test_noise_is_seeded_and_level_zero_is_the_input(arch: str) -> None:
    net, x = _net(arch), _batch(*CASES[arch])
    assert net.corrupt(x, 0.0) is x
    a = net.corrupt(x, 0.3, torch.Generator().manual_seed(1))
    b = net.corrupt(x, 0.3, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, x)
    with pytest.raises(ValueError):
        net.corrupt(x, -1.0)


@pytest.mark.parametrize("arch", list(CASES))
def test_training_lowers_the_reconstruction_error(arch: str) -> None:
    net, x = _net(arch), _batch(*CASES[arch], n=32)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    with torch.no_grad():
        before = net.errors(x).sum(1).mean().item()
    for _ in range(60):
        loss = net.errors(net.corrupt(x, 0.1, torch.Generator().manual_seed(2)), x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = net.errors(x).sum(1).mean().item()
    assert after < 0.95 * before, (before, after)  # random inputs, a 3-wide code: a little is all it can


def test_wrong_shapes_and_latent_are_refused() -> None:
    with pytest.raises(ValueError, match="latent"):
        create_model("autoencoder", (1, 8, 8), 1, latent=0)
    net = _net("autoencoder")
    with pytest.raises(ValueError, match=r"\[N, 1, 8, 8\]"):
        net.encode(torch.zeros(2, 64))


@pytest.mark.parametrize("arch", list(CASES))
def test_error_and_code_heads_export_with_parity(arch: str, tmp_path) -> None:
    """What deploy ships: the per-row error head and the code head, each an ONNX graph with a dynamic
    batch axis, equal to PyTorch."""
    import onnxruntime as ort

    from pipelines.export import export_onnx

    net, x = _net(arch).eval(), _batch(*CASES[arch], n=9)

    class Errors(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, rows: torch.Tensor) -> torch.Tensor:
            return self.net.errors(rows)

    class Code(Errors):
        def forward(self, rows: torch.Tensor) -> torch.Tensor:
            return self.net.encode(rows)

    for head in (Errors(), Code()):
        path = tmp_path / f"{type(head).__name__}.onnx"
        export_onnx(head.eval(), list(x.shape[1:]), path, example=x[:4])
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for n in (1, 9):
            got = session.run(None, {name: x[:n].numpy()})[0]
            with torch.no_grad():
                want = head(x[:n]).numpy()
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
