"""DCGAN-style image GAN, optionally class-conditional, trained with Lightning manual optimisation.

The generator maps noise ``[N, noise_dim]`` (and class indices ``[N]``) to images in ``[-1, 1]``;
the discriminator maps images in ``[-1, 1]`` (and class indices) to one logit each. Conditioning:
a one-hot of the class concatenated to the noise in the generator, a projection (an embedding of the
class dotted with the features) in the discriminator. Only the generator ships (``export_generator``:
``noise, label -> image`` in the data's raw units).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from models.registry import register_model

NOISE_NAME, LABEL_NAME, IMAGE_NAME = "noise", "label", "image"


def _plan(height: int, width: int) -> tuple[int, int, int]:
    """(upsamplings, base height, base width): the most stride-2 steps that keep the smaller side
    of the base map >= 4 (8 -> 4x4 + 1, 28 -> 7x7 + 2, 64 -> 4x4 + 4); odd sizes are cropped."""
    n = 0
    while min(height, width) / 2 ** (n + 1) >= 4:
        n += 1
    return n, math.ceil(height / 2**n), math.ceil(width / 2**n)


class Generator(nn.Module):
    """noise (+ one-hot class) -> Linear -> base map -> [ConvT 4x4 s2 + BN + ReLU] x n -> 3x3 conv -> tanh."""

    def __init__(self, out_shape: Sequence[int], noise_dim: int, num_classes: int, width: int) -> None:
        super().__init__()
        c, h, w = out_shape
        n, bh, bw = _plan(h, w)
        chans = [min(width * 2 ** (n - i), width * 8) for i in range(n + 1)]  # base .. full resolution
        self.out_hw = (h, w)
        self.num_classes = num_classes
        if num_classes:  # a fixed identity table: one_hot as a Gather, which every exporter handles
            self.register_buffer("onehot", torch.eye(num_classes), persistent=False)
        self.project = nn.Sequential(
            nn.Linear(noise_dim + num_classes, chans[0] * bh * bw, bias=False),
            nn.Unflatten(1, (chans[0], bh, bw)), nn.BatchNorm2d(chans[0]), nn.ReLU(),
        )
        blocks: list[nn.Module] = []
        for c_in, c_out in zip(chans, chans[1:]):
            blocks += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        self.blocks = nn.Sequential(*blocks)
        self.to_image = nn.Conv2d(chans[-1], c, 3, padding=1)
        self.crop = ((bh * 2**n - h) // 2, (bw * 2**n - w) // 2)

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        if self.num_classes:
            z = torch.cat([z, self.onehot[labels]], dim=1)
        else:  # unused, but tied to the batch axis so that the exported graph keeps the input dynamic
            z = z + labels[:, None].to(z.dtype) * 0.0
        x = torch.tanh(self.to_image(self.blocks(self.project(z))))
        (top, left), (h, w) = self.crop, self.out_hw
        return x[:, :, top:top + h, left:left + w]


class Discriminator(nn.Module):
    """3x3 conv at full resolution, [conv 4x4 s2 + LeakyReLU] x n, flatten, linear + class projection.

    Spectral norm on every weight by default (no BatchNorm: the discriminator's verdict on one image
    does not depend on the rest of the batch)."""

    def __init__(self, in_shape: Sequence[int], num_classes: int, width: int, spectral_norm: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        c, h, w = in_shape
        n, _, _ = _plan(h, w)
        chans = [min(width * 2 ** (n - i), width * 8) for i in range(n + 1)][::-1]  # full .. base resolution
        sn = _spectral_norm if spectral_norm else (lambda m: m)
        layers: list[nn.Module] = [sn(nn.Conv2d(c, chans[0], 3, padding=1)), nn.LeakyReLU(0.2)]
        for c_in, c_out in zip(chans, chans[1:]):
            layers += [sn(nn.Conv2d(c_in, c_out, 4, 2, 1)), nn.LeakyReLU(0.2)]
            h, w = h // 2, w // 2
        layers += [nn.Flatten(), nn.Dropout(dropout)]
        self.features = nn.Sequential(*layers)
        dim = chans[-1] * h * w
        self.linear = sn(nn.Linear(dim, 1))
        self.embed = sn(nn.Embedding(num_classes, dim)) if num_classes else None

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        f = self.features(x)
        out = self.linear(f).squeeze(1)
        if self.embed is not None:
            out = out + (self.embed(labels) * f).sum(dim=1)
        return out


@register_model("dcgan")
class DCGAN(nn.Module):
    """A generator and a discriminator for images of ``input_shape`` (C, H, W), conditioned on
    ``num_outputs`` classes (0 or 1: unconditional). ``forward(z, labels)`` generates."""

    kind = "gan"

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        noise_dim: int = 64,
        width: int = 64,
        d_width: int | None = None,
        spectral_norm: bool = True,
        d_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"dcgan needs image inputs (C, H, W), got input shape {tuple(input_shape)}")
        if noise_dim < 1 or width < 1 or (d_width is not None and d_width < 1):
            raise ValueError("noise_dim, width and d_width must be positive")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.noise_dim = int(noise_dim)
        self.num_classes = int(num_outputs) if num_outputs > 1 else 0
        self.generator = Generator(self.input_shape, self.noise_dim, self.num_classes, width)
        self.discriminator = Discriminator(self.input_shape, self.num_classes, d_width or width,
                                           spectral_norm=spectral_norm, dropout=d_dropout)

    def generate(self, z: Tensor, labels: Tensor) -> Tensor:
        """``[N, noise_dim]`` noise and ``[N]`` int64 classes -> ``[N, C, H, W]`` in [-1, 1]."""
        return self.generator(z, labels)

    def discriminate(self, x: Tensor, labels: Tensor) -> Tensor:
        """``[N, C, H, W]`` images in [-1, 1] and ``[N]`` classes -> ``[N]`` logits (real > 0)."""
        return self.discriminator(x, labels)

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        return self.generate(z, labels)

    # What the generation task asks of its network (so that the task plug-in, which every stage
    # loads, never imports this module itself).
    def training_module(self, *, lr: float, lo: Any, hi: Any, weight_decay: float = 0.0,
                        classes: list[str] | None = None) -> Any:
        """The LightningModule that trains this GAN; each epoch it can draw a sample grid
        (``epoch_artifact(folder, epoch)``, logged by the train step)."""
        module = _lit_class()(self, lr=lr, lo=lo, hi=hi, weight_decay=weight_decay)

        def epoch_artifact(folder: Path, epoch: int) -> Path:
            path = Path(folder) / f"samples-epoch-{epoch:03d}.png"
            sample_grid_png(self, path, lo, hi, classes=classes if self.num_classes else None)
            return path

        module.epoch_artifact = epoch_artifact
        return module

    def export_onnx(self, path: str | Path, lo: Any, hi: Any) -> dict[str, Any]:
        """The generator alone as ONNX (``export_generator``)."""
        return export_generator(self, path, lo, hi)


def _as_image_tensor(value: Any, shape: Sequence[int]) -> Tensor:
    """``lo``/``hi`` as a float32 tensor broadcastable to ``shape`` (C, H, W): a scalar, one value per
    channel (``[C]`` or ``[C, 1, 1]``) or one per pixel."""
    t = torch.as_tensor(np.asarray(value, dtype=np.float32))
    if t.ndim == 1 and len(t) == shape[0] > 1:  # per channel
        t = t.reshape(-1, 1, 1)
    try:
        if torch.broadcast_shapes(t.shape, tuple(shape)) != tuple(shape):
            raise RuntimeError
    except RuntimeError:
        raise ValueError(f"lo/hi of shape {tuple(t.shape)} do not broadcast to the image shape {tuple(shape)}") from None
    return t


class RawGenerator(nn.Module):
    """The generator answering in the data's raw units: ``lo + (g + 1) / 2 * (hi - lo)``."""

    def __init__(self, net: DCGAN, lo: Any, hi: Any) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("lo", _as_image_tensor(lo, net.input_shape))
        self.register_buffer("hi", _as_image_tensor(hi, net.input_shape))

    def forward(self, noise: Tensor, label: Tensor) -> Tensor:
        return self.lo + (self.net.generate(noise, label) + 1.0) * 0.5 * (self.hi - self.lo)


def export_generator(net: DCGAN, path: str | Path, lo: Any, hi: Any, example_batch: int = 4) -> dict[str, Any]:
    """ONNX graph ``noise float32 [batch, noise_dim], label int64 [batch] -> image [batch, C, H, W]``
    in raw units (``lo``/``hi``: broadcastable to (C, H, W), e.g. 0 and 16 for digits), exported by
    the dynamo exporter in eval mode with a dynamic batch axis shared by both inputs, one file."""
    import onnx

    from pipelines.plugins import ONNX_OPSET

    if example_batch < 2:
        raise ValueError("example_batch must be >= 2 (a batch of 1 freezes the batch axis)")
    model = RawGenerator(net, lo, hi).eval()
    device = next(net.parameters()).device
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(example_batch, net.noise_dim, generator=g).to(device)
    label = (torch.arange(example_batch) % max(net.num_classes, 1)).to(device)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad():
        program = torch.onnx.export(
            model, (noise, label), dynamo=True, input_names=[NOISE_NAME, LABEL_NAME], output_names=[IMAGE_NAME],
            dynamic_shapes=({0: batch}, {0: batch}), external_data=False, verbose=False, opset_version=ONNX_OPSET,
        )
    program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    shapes = {}
    for inp in proto.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if not dims[0].dim_param:
            raise RuntimeError(f"{path}: batch axis of {inp.name!r} frozen during export at {dims[0].dim_value}")
        shapes[inp.name] = [d.dim_param or d.dim_value for d in dims]
    if list(shapes) != [NOISE_NAME, LABEL_NAME]:
        raise RuntimeError(f"{path}: expected inputs {[NOISE_NAME, LABEL_NAME]}, got {list(shapes)}")
    out_dims = proto.graph.output[0].type.tensor_type.shape.dim
    return {"opset": proto.opset_import[0].version, "ir_version": proto.ir_version, "input_shapes": shapes,
            "output_name": IMAGE_NAME, "output_shape": [d.dim_param or d.dim_value for d in out_dims]}


@functools.cache
def _lit_class() -> type:
    """``GanLitModule``, built on first use: Lightning costs ~7 s to import, and the steps that only
    look architectures up (design) load this module too."""
    import lightning as L

    class GanLitModule(L.LightningModule):
        """Non-saturating GAN training of a ``DCGAN`` with two Adam optimizers (manual optimisation).

        ``lo``/``hi`` are the model-input values (e.g. standardised pixels) of the data's raw minimum and
        maximum; inputs are mapped onto [-1, 1] with them. Per batch: one discriminator step (BCE, real
        targets ``real_label``) and one generator step on the same fakes. ``d_lr`` defaults to ``lr``.
        """

        def __init__(self, net: DCGAN, lr: float = 2e-4, betas: Sequence[float] = (0.5, 0.999), *, lo: Any, hi: Any,
                     weight_decay: float = 0.0, d_lr: float | None = None, real_label: float = 0.9) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.net = net
            self.lr, self.d_lr = lr, lr if d_lr is None else d_lr
            self.betas = tuple(betas)
            self.weight_decay = weight_decay
            self.real_label = real_label
            self.register_buffer("lo", _as_image_tensor(lo, net.input_shape))
            self.register_buffer("hi", _as_image_tensor(hi, net.input_shape))

        def forward(self, z: Tensor, labels: Tensor) -> Tensor:
            return self.net.generate(z, labels)

        def to_unit(self, x: Tensor) -> Tensor:
            """Model inputs -> [-1, 1]."""
            return 2.0 * (x - self.lo) / (self.hi - self.lo) - 1.0

        def _noise(self, n: int) -> Tensor:
            return torch.randn(n, self.net.noise_dim, device=self.device)

        def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
            opt_d, opt_g = self.optimizers()
            x, y = batch
            y = y.long()
            real = self.to_unit(x)
            fake = self.net.generate(self._noise(len(x)), y)

            # discriminator: real -> real_label, fake -> 0
            self.toggle_optimizer(opt_d)
            d_real = self.net.discriminate(real, y)
            d_fake = self.net.discriminate(fake.detach(), y)
            loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.full_like(d_real, self.real_label))
                      + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
            opt_d.zero_grad()
            self.manual_backward(loss_d)
            opt_d.step()
            self.untoggle_optimizer(opt_d)

            # generator (non-saturating): the updated discriminator should call the fakes real
            self.toggle_optimizer(opt_g)
            g_logits = self.net.discriminate(fake, y)
            loss_g = F.binary_cross_entropy_with_logits(g_logits, torch.ones_like(g_logits))
            opt_g.zero_grad()
            self.manual_backward(loss_g)
            opt_g.step()
            self.untoggle_optimizer(opt_g)

            self.log("train_d_loss", loss_d.detach(), on_step=False, on_epoch=True)
            self.log("train_g_loss", loss_g.detach(), on_step=False, on_epoch=True, prog_bar=True)

        def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
            x, y = batch
            y = y.long()
            d_real = self.net.discriminate(self.to_unit(x), y)
            d_fake = self.net.discriminate(self.net.generate(self._noise(len(x)), y), y)
            logits = torch.cat([d_real, d_fake])
            targets = torch.cat([torch.ones_like(d_real), torch.zeros_like(d_fake)])
            self.log("val_loss", F.binary_cross_entropy_with_logits(logits, targets), on_step=False, on_epoch=True,
                     prog_bar=True)
            self.log("val_d_real", torch.sigmoid(d_real).mean(), on_step=False, on_epoch=True)
            self.log("val_d_fake", torch.sigmoid(d_fake).mean(), on_step=False, on_epoch=True)

        def configure_optimizers(self) -> list[torch.optim.Optimizer]:
            opt_d = torch.optim.Adam(self.net.discriminator.parameters(), lr=self.d_lr, betas=self.betas,
                                     weight_decay=self.weight_decay)
            opt_g = torch.optim.Adam(self.net.generator.parameters(), lr=self.lr, betas=self.betas,
                                     weight_decay=self.weight_decay)
            return [opt_d, opt_g]

    return GanLitModule


def __getattr__(name: str) -> Any:
    if name == "GanLitModule":
        return _lit_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def sample_grid_png(net: DCGAN, path: str | Path, lo: Any, hi: Any, n_per_class: int = 8, seed: int = 0,
                    classes: list[str] | None = None) -> None:
    """A PNG grid of generated images in eval mode with fixed noise from ``seed`` (epochs compare):
    one row of ``n_per_class`` per class for a conditional model, else ``n_per_class`` squared.
    ``lo``/``hi``: the raw range (as for ``export_generator``); shown from min(lo) to max(hi)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = net.num_classes
    rows = k if k else n_per_class
    n = rows * n_per_class
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, net.noise_dim, generator=g)
    labels = torch.arange(rows).repeat_interleave(n_per_class) if k else torch.zeros(n, dtype=torch.long)
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            img = net.generate(z.to(device), labels.to(device)).float().cpu()
    finally:
        net.train(was_training)
    lo_t, hi_t = _as_image_tensor(lo, net.input_shape), _as_image_tensor(hi, net.input_shape)
    raw = lo_t + (img + 1.0) * 0.5 * (hi_t - lo_t)
    vmin, vmax = float(lo_t.min()), float(hi_t.max())
    show = ((raw - vmin) / max(vmax - vmin, 1e-12)).clamp(0, 1).numpy()  # [n, C, H, W] in [0, 1]
    c, h, w = show.shape[1:]
    pad = 1
    mosaic = np.ones((rows * (h + pad) - pad, n_per_class * (w + pad) - pad, c), np.float32)
    for i in range(n):
        r, col = divmod(i, n_per_class)
        mosaic[r * (h + pad):r * (h + pad) + h, col * (w + pad):col * (w + pad) + w] = show[i].transpose(1, 2, 0)
    cell = max(0.35, min(1.0, h / 32))  # inches per image
    fig = Figure(figsize=(0.6 + n_per_class * cell, 0.3 + rows * cell), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.12 if k else 0.02, 0.02, 0.86 if k else 0.96, 0.96))
    if c == 1:
        ax.imshow(mosaic[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(mosaic[..., :3], interpolation="nearest")
    ax.set_xticks([])
    if k:
        names = classes if classes is not None and len(classes) == k else [str(i) for i in range(k)]
        ax.set_yticks([r * (h + pad) + (h - 1) / 2 for r in range(k)], names, fontsize=7)
        ax.tick_params(axis="y", length=0)
    else:
        ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    fig.savefig(str(path), format="png")
