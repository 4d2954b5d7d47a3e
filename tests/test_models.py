"""Every registered architecture goes through forward + backward automatically (timm style)."""

import inspect

import pytest
import torch

from models.registry import ModelError, create_model, get_model_class, list_models


def _predictors():
    """Architectures that map inputs to ``num_outputs`` values (autoencoders and GANs have their own tests)."""
    return [n for n in list_models() if getattr(get_model_class(n), "kind", "predictor") == "predictor"]


SHAPES = {"image": (1, 8, 8), "flat": (12,)}
CARDS = [5, 3, 9]  # unequal on purpose: a wrong per-column offset or clamp shows up
TABULAR = [n for n in _predictors() if "cardinalities" in inspect.signature(get_model_class(n)).parameters]
# Token-id families: forward/backward here, export + parity with a dynamic sequence axis in test_models_text.py.
TEXT = [n for n in list_models() if "vocab_size" in inspect.signature(get_model_class(n)).parameters]
VOCAB = 50


def _tabular_rows(n, n_num=9, cards=CARDS, seed=0):
    """Valid rows of the tabular contract: standardised numerics, then category indices as floats."""
    g = torch.Generator().manual_seed(seed)
    cats = [torch.randint(0, c, (n, 1), generator=g).float() for c in cards]
    return torch.cat([torch.randn(n, n_num, generator=g), *cats], dim=1)


def _token_rows(n, max_len=12, seed=0):
    """Right-padded token ids of unequal lengths (1..max_len), 0 = <pad>."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (n, 1), generator=g)
    return torch.randint(1, VOCAB, (n, max_len), generator=g) * (torch.arange(max_len) < lengths)


def _case(name):
    """(input_shape, data_args, make_rows) for ``name``: architectures that take ``cardinalities``
    get 9 numeric + 3 categorical columns, those that take ``vocab_size`` token ids, every other
    family 1x8x8 images (mlp flattens)."""
    if "cardinalities" in inspect.signature(get_model_class(name)).parameters:  # TABULAR + tab_autoencoder
        return SHAPES["flat"], {"cardinalities": CARDS}, _tabular_rows
    if name in TEXT:
        return (12,), {"vocab_size": VOCAB}, _token_rows
    return SHAPES["image"], None, lambda n: torch.randn(n, *SHAPES["image"])


@pytest.mark.parametrize("name", _predictors())
def test_forward_backward_every_architecture(name):
    torch.manual_seed(0)
    shape, data_args, make_rows = _case(name)
    net = create_model(name, shape, 10, data_args=data_args)
    x = make_rows(4)
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


@pytest.mark.parametrize("name", [n for n in list_models()  # a GAN exports its generator: tests/test_gan.py
                                  if n not in TEXT and getattr(get_model_class(n), "kind", "") != "gan"])
def test_onnx_export_and_parity_every_architecture(name, tmp_path):
    """Dynamo export with a dynamic batch axis, then ORT == torch at several batch sizes."""
    import numpy as np

    from pipelines.deploy import parity_check
    from pipelines.export import Deployable, export_onnx
    from serving.runtime import make_session

    torch.manual_seed(0)
    shape, data_args, make_rows = _case(name)
    shape = list(shape)
    net = create_model(name, shape, 10, data_args=data_args)
    if data_args is None:  # image families ship behind the deploy-time standardisation, raw pixels in
        model = Deployable(net, {"kind": "standardize_global", "mean": 4.9, "std": 6.0}, shape)
        X = np.random.default_rng(0).uniform(0, 16, size=(11, *shape)).astype(np.float32)
    else:  # tabular preprocessing happens upstream; the bare network takes contract rows
        model, X = net, make_rows(11).numpy()
    info = export_onnx(model.eval(), shape, tmp_path / "m.onnx")
    assert info["input_shape"] == ["batch", *shape]
    with torch.no_grad():
        reference = model(torch.from_numpy(X)).numpy()
    report = parity_check(make_session(tmp_path / "m.onnx"), reference, lambda s: {"input": X[s]}, (1, 4, 11),
                          atol=1e-4)
    assert report["passed"], report
    assert [r["batch_size"] for r in report["by_batch_size"]] == [1, 4, 11]


def test_export_refuses_batch_of_one(tmp_path):
    from pipelines.export import export_onnx

    with pytest.raises(ValueError, match="batch of 1 freezes the batch axis"):
        export_onnx(create_model("mlp", (4,), 2), [4], tmp_path / "m.onnx", example_batch=1)


@pytest.mark.parametrize("name", TABULAR)
@pytest.mark.parametrize("shape,cards", [((10,), []), ((3,), [4, 2, 7])], ids=["all_numeric", "all_categorical"])
def test_tabular_without_categorical_or_numeric_columns(name, shape, cards):
    torch.manual_seed(0)
    net = create_model(name, shape, 1, data_args={"cardinalities": cards})
    x = _tabular_rows(4, n_num=shape[0] - len(cards), cards=cards)
    out = net(x)
    assert out.shape == (4, 1) and torch.isfinite(out).all()
    out.sum().backward()
    assert net.eval()(x[:1]).shape == (1, 1)


@pytest.mark.parametrize("name", TABULAR)
def test_tabular_out_of_range_index_is_clamped_not_a_crash(name):
    torch.manual_seed(0)
    net = create_model(name, (12,), 2, data_args={"cardinalities": CARDS}).eval()
    x = _tabular_rows(3)
    bad, clamped = x.clone(), x.clone()
    bad[0, -1], clamped[0, -1] = 999.0, CARDS[-1] - 1  # past the last category -> the last category
    bad[1, -3], clamped[1, -3] = -3.0, 0.0  # negative -> the missing bucket
    with torch.no_grad():
        torch.testing.assert_close(net(bad), net(clamped))


@pytest.mark.parametrize("name", TABULAR)
def test_tabular_kwarg_errors_name_the_params_key(name):
    args = {"cardinalities": CARDS}
    with pytest.raises(ModelError, match=r"model\.kwargs\.n_hidden: .* takes no such argument"):
        create_model(name, (12,), 2, data_args=args, n_hidden=3)
    with pytest.raises(ModelError, match=r"model\.kwargs\.cardinalities: set from the data"):
        create_model(name, (12,), 2, cardinalities=CARDS)
    with pytest.raises(ModelError, match=r"3 categorical columns do not fit in 2 input columns"):
        create_model(name, (2,), 2, data_args=args)
    with pytest.raises(ModelError, match=r"tabular models need flat inputs"):
        create_model(name, (1, 8, 8), 2, data_args=args)


def test_ft_transformer_rejects_heads_that_do_not_divide_the_token():
    with pytest.raises(ModelError, match=r"d_token \(30\) must be a positive multiple of n_heads \(4\)"):
        create_model("ft_transformer", (12,), 2, data_args={"cardinalities": CARDS}, d_token=30)


def test_tab_mlp_embedding_widths_follow_the_documented_rule():
    from models.tabular import embedding_dim

    net = create_model("tab_mlp", (4,), 1, data_args={"cardinalities": [6, 100]}, max_emb_dim=16)
    assert [e.embedding_dim for e in net.embed.embeddings] == [embedding_dim(6), embedding_dim(100)] == [3, 16]


@pytest.fixture
def one_thread():
    """Tiny full-batch steps on a shared 2-core box run ~10x faster without intra-op threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", ["tab_mlp", "ft_transformer"])
def test_tabular_learns_a_categorical_signal(name, one_thread):
    """The label is a non-monotone function of one category index (numeric + second category are
    noise): learnable only through the embeddings, not as a number."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    signal, noise = torch.randint(0, 8, (256,), generator=g), torch.randint(0, 5, (256,), generator=g)
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])[signal]
    x = torch.cat([torch.randn(256, 4, generator=g), signal[:, None].float(), noise[:, None].float()], dim=1)
    net = create_model(name, (6,), 2, data_args={"cardinalities": [8, 5]})
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    for _ in range(100):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        accuracy = (net.eval()(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.9, f"{name} reached only {accuracy:.2f} train accuracy"
