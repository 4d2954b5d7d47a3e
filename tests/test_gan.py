"""The DCGAN family: shapes, manual-optimisation training, generator export + parity, sample grid.
Its quality through the real steps (a judge trained on the real digits grades the generated ones) is
measured in ``benchmarks/unsupervised_bench.py``."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from models.gan import DCGAN, GanLitModule, export_generator, sample_grid_png
from models.registry import create_model


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------- fast tests


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 64, 64), (3, 9, 13)])
@pytest.mark.parametrize("classes", [10, 0, 1])
def test_generate_and_discriminate_shapes(shape, classes, one_thread):
    torch.manual_seed(0)
    net = create_model("dcgan", shape, classes, width=8)
    assert net.kind == "gan" and DCGAN.kind == "gan"
    assert net.num_classes == (10 if classes == 10 else 0) and net.noise_dim == 64
    assert isinstance(net.generator, torch.nn.Module) and isinstance(net.discriminator, torch.nn.Module)
    z, y = torch.randn(3, net.noise_dim), torch.tensor([0, 5, 9])
    img = net.generate(z, y)
    assert img.shape == (3, *shape) and img.abs().max() <= 1
    torch.testing.assert_close(net(z, y), img, rtol=0, atol=0) if not net.training else None
    logits = net.discriminate(img, y)
    assert logits.shape == (3,) and torch.isfinite(logits).all()
    (logits.sum() + img.sum()).backward()
    assert all(p.grad is not None for p in net.parameters())


def test_conditioning_changes_the_image_and_unconditional_ignores_labels():
    torch.manual_seed(0)
    z = torch.randn(2, 64).repeat(1, 1)
    cond = create_model("dcgan", (1, 8, 8), 10, width=8).eval()
    plain = create_model("dcgan", (1, 8, 8), 0, width=8).eval()
    with torch.no_grad():
        assert not torch.allclose(cond.generate(z, torch.tensor([0, 0])), cond.generate(z, torch.tensor([3, 7])))
        torch.testing.assert_close(plain.generate(z, torch.tensor([0, 0])), plain.generate(z, torch.tensor([3, 7])))


def test_rejects_non_image_shapes():
    from models.registry import ModelError

    with pytest.raises(ModelError, match=r"dcgan needs image inputs"):
        create_model("dcgan", (12,), 3)


def _tiny_loaders(n=48, shape=(1, 8, 8), classes=3, batch=16):
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch), DataLoader(TensorDataset(x[:20], y[:20]), batch_size=8)


def test_manual_optimisation_steps_both_networks(one_thread):
    import lightning as L

    L.seed_everything(0, verbose=False)
    net = create_model("dcgan", (1, 8, 8), 3, width=8)
    lit = GanLitModule(net, lo=-1.0, hi=3.0)
    assert not lit.automatic_optimization
    before = {k: v.clone() for k, v in net.state_dict().items()}
    train, val = _tiny_loaders()
    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=2, deterministic=True, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(lit, train, val)
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("generator.") and "weight" in k for k in changed)
    assert any(k.startswith("discriminator.") and "weight" in k for k in changed)
    opt_d, opt_g = lit.optimizers()
    assert opt_d.optimizer.state and opt_g.optimizer.state  # both Adams stepped
    assert all(len(s) and int(s["step"]) == 3 for s in opt_g.optimizer.state.values())
    assert all(int(s["step"]) == 3 for s in opt_d.optimizer.state.values())
    metrics = trainer.callback_metrics
    for key in ("train_d_loss", "train_g_loss", "val_loss", "val_d_real"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert 0 <= float(metrics["val_d_real"]) <= 1


def test_inputs_map_onto_the_unit_range():
    net = create_model("dcgan", (3, 4, 4), 0, width=4)
    lit = GanLitModule(net, lo=[-1.0, 0.0, 2.0], hi=[1.0, 4.0, 6.0])
    lo, hi = lit.lo.expand(3, 4, 4), lit.hi.expand(3, 4, 4)
    torch.testing.assert_close(lit.to_unit(lo[None]), -torch.ones(1, 3, 4, 4))
    torch.testing.assert_close(lit.to_unit(hi[None]), torch.ones(1, 3, 4, 4))
    with pytest.raises(ValueError, match="do not broadcast"):
        GanLitModule(net, lo=[0.0, 1.0], hi=1.0)


@pytest.mark.parametrize("classes,shape,lo,hi", [
    (10, (1, 8, 8), 0.0, 16.0),
    (0, (1, 8, 8), 0.0, 16.0),
    (4, (3, 12, 12), [0.0, 0.0, 0.0], [255.0, 255.0, 255.0]),
])
def test_generator_export_and_parity(classes, shape, lo, hi, tmp_path, one_thread):
    """Dynamo export of ``noise, label -> raw image``; ORT == torch at batch 1/4/11, trained BN stats."""
    from serving.runtime import make_session

    torch.manual_seed(0)
    net = create_model("dcgan", shape, classes, width=8)
    with torch.no_grad():  # non-trivial BatchNorm running statistics, so that eval mode matters
        net.train()
        for _ in range(3):
            net.generate(torch.randn(16, net.noise_dim) * 2, torch.randint(0, max(classes, 1), (16,)))
    net.eval()
    info = export_generator(net, tmp_path / "g.onnx", lo, hi)
    assert info["input_shapes"] == {"noise": ["batch", net.noise_dim], "label": ["batch"]}
    assert info["output_shape"] == ["batch", *shape] and info["opset"] == 20
    session = make_session(tmp_path / "g.onnx")
    assert [i.type for i in session.get_inputs()] == ["tensor(float)", "tensor(int64)"]
    g = torch.Generator().manual_seed(1)
    z, y = torch.randn(11, net.noise_dim, generator=g), torch.randint(0, max(classes, 1), (11,), generator=g)
    lo_t, hi_t = torch.as_tensor(np.asarray(lo, np.float32)), torch.as_tensor(np.asarray(hi, np.float32))
    if lo_t.ndim == 1:
        lo_t, hi_t = lo_t.reshape(-1, 1, 1), hi_t.reshape(-1, 1, 1)
    with torch.no_grad():
        unit = net.generate(z, y)
    reference = (lo_t + (unit + 1) / 2 * (hi_t - lo_t)).numpy()
    span = float((hi_t - lo_t).max())
    for bs in (1, 4, 11):
        out = np.concatenate([session.run(None, {"noise": z[i:i + bs].numpy(), "label": y[i:i + bs].numpy()})[0]
                              for i in range(0, 11, bs)])
        assert out.shape == reference.shape
        # < 1e-4 in the generator's own [-1, 1] units (raw units scale float32 rounding by the range)
        assert np.abs(out - reference).max() / span * 2 < 1e-4, bs
        assert out.min() >= float(lo_t.min()) - 1e-3 and out.max() <= float(hi_t.max()) + 1e-3
    assert net.training is False


def test_export_refuses_batch_of_one(tmp_path):
    with pytest.raises(ValueError, match="batch of 1"):
        export_generator(create_model("dcgan", (1, 8, 8), 0, width=4), tmp_path / "g.onnx", 0, 16, example_batch=1)


@pytest.mark.parametrize("classes,shape", [(10, (1, 8, 8)), (0, (1, 8, 8)), (3, (3, 16, 16))])
def test_sample_grid_png(classes, shape, tmp_path, one_thread):
    net = create_model("dcgan", shape, classes, width=8)
    net.train()
    names = [f"class {i}" for i in range(classes)] if classes else None
    start = time.perf_counter()
    sample_grid_png(net, tmp_path / "grid.png", 0.0, 16.0, classes=names)
    elapsed = time.perf_counter() - start
    sample_grid_png(net, tmp_path / "again.png", 0.0, 16.0, classes=names)
    data = (tmp_path / "grid.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data == (tmp_path / "again.png").read_bytes()  # fixed noise: epochs compare
    assert net.training  # mode restored
    assert elapsed < 1.5  # the first call pays matplotlib's imports; measured ~0.02 s warm for 8x8


def test_verdict_names_the_frechet_distance_where_the_baseline_is_closer():
    """The confident share saturates (real digits score ~0.98): the verdict adds the Fréchet distance."""
    from pipelines.evaluate import verdict
    from pipelines.tasks.generation import Generation

    metrics = {"confident_share": 0.99, "frechet_distance": 3.5,
               "baselines": {"gmm": {"confident_share": 0.98, "frechet_distance": 1.25}}}
    verdict(metrics, "confident_share", Generation())
    assert metrics["verdict"].startswith("the network beats the best baseline (gmm) on test confident_share")
    assert metrics["verdict"].endswith("frechet_distance to the test images (lower is better; variety as well "
                                       "as quality): 3.500 vs 1.250, the baseline (gmm) is closer")
    metrics["frechet_distance"] = 1.0
    verdict(metrics, "confident_share", Generation())
    assert metrics["verdict"].endswith("1.000 vs 1.250, the network is closer")
    metrics["baselines"] = {}
    verdict(metrics, "confident_share", Generation())
    assert metrics["verdict"].startswith("no baselines run")


def test_judge_is_confident_on_real_digits(one_thread):
    """No label smoothing: a judge that reads the digits well is confident on most real ones (with
    smoothing 0.1 its probabilities stopped near 0.91 and a third of the real test digits failed p >= 0.9)."""
    from sklearn.datasets import load_digits

    from pipelines.tasks.generation import Judge

    X, y = load_digits(return_X_y=True)
    X = (X.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    torch.manual_seed(0)
    judge = Judge(create_model("cnn", [1, 8, 8], 10), epochs=8, seed=0).fit(X[:1200], y[:1200])
    proba, features = judge.predict(X[1200:])
    assert (proba.argmax(1) == y[1200:]).mean() > 0.9
    assert ((proba.max(1) >= 0.9) & (proba.argmax(1) == y[1200:])).mean() > 0.8
    assert features.shape[0] == len(X) - 1200
