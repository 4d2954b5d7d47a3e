"""Autoencoders for the "anomaly" and "embedding" tasks: tables, images, any fixed-shape input.

Every class here has ``kind = "autoencoder"`` (predictor families have no ``kind``) and implements
the protocol the pipeline calls:

- ``latent: int`` -- width of the code; ``error_parts: int`` -- ``P``, the columns of ``errors``.
- ``forward(x)`` -- the decoder's raw output (a reconstruction, or logits for categorical columns).
- ``encode(x) -> [N, latent]`` -- the code (deterministic in eval mode).
- ``errors(x, target=None) -> [N, P]`` float32, >= 0 -- per-part reconstruction error of ``target``
  (default ``x``) when ``x`` goes in. Training minimises ``errors(x_noisy, x).mean()``; the anomaly
  score at serving time is ``errors(x).sum(1)``.
- ``corrupt(x, level, generator=None)`` -- the input noise of a denoising autoencoder (level 0: ``x``).

``encode`` and ``errors`` export with ``pipelines.export.export_onnx`` (a dynamic batch axis) behind
a wrapper whose ``forward`` calls them; ``errors`` then has ONE input, the rows themselves.

The registry passes ``num_outputs`` to every architecture; autoencoders ignore it (what comes out
is decided by the input shape and ``latent``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.registry import register_model
from models.tabular import CategoryIndex, FlatEmbedder, _split_columns


def _check_latent(latent: int) -> int:
    if int(latent) != latent or latent < 1:
        raise ValueError(f"latent must be a positive int, got {latent!r}")
    return int(latent)


def _check_level(level: float) -> float:
    level = float(level)
    if not math.isfinite(level) or level < 0:
        raise ValueError(f"corruption level must be a finite number >= 0, got {level}")
    return level


def _dense_stack(width: int, hidden: Sequence[int], out: int, dropout: float) -> nn.Sequential:
    """Linear + SiLU (+ Dropout) per hidden size, then a plain Linear to ``out`` (no activation)."""
    if not hidden or any(int(h) != h or h < 1 for h in hidden):
        raise ValueError(f"hidden must be a non-empty list of positive sizes, got {list(hidden)}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.SiLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = int(h)
    layers.append(nn.Linear(width, out))
    return nn.Sequential(*layers)


def _gaussian(x: Tensor, level: float, generator: torch.Generator | None) -> Tensor:
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device if generator is None
                        else generator.device)
    return x + level * noise.to(x.device)


def _row_mse(recon: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over every element of each row -> ``[N, 1]``."""
    return (recon - target).square().flatten(1).mean(dim=1, keepdim=True)


@register_model("tab_autoencoder")
class TabAutoencoder(nn.Module):
    """Autoencoder for a table of standardised numeric + categorical columns (the contract of
    ``models/tabular.py``: one float32 ``[N, F]`` tensor, numerics first, category indices last).

    Encoder: per-column embeddings (as ``tab_mlp``) -> MLP ``hidden`` -> Linear to ``latent``.
    Decoder: the mirrored MLP -> ``n_num`` numeric values + one logits vector per categorical column.
    ``errors`` has one part per raw column, in input order: squared error of each standardised numeric,
    then the cross-entropy of each true (clamped) category index. ``num_outputs`` is ignored.
    """

    kind = "autoencoder"

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        cardinalities: Sequence[int] = (),
        latent: int = 8,
        hidden: Sequence[int] = (64, 32),
        dropout: float = 0.0,
        max_emb_dim: int = 16,
    ) -> None:
        super().__init__()
        n_num, cards = _split_columns(input_shape, cardinalities)
        self.latent = _check_latent(latent)
        self.n_num, self.cardinalities = n_num, cards
        self.error_parts = n_num + len(cards)
        self.embed = FlatEmbedder(n_num, cards, max_emb_dim)
        self.encoder = _dense_stack(self.embed.out_features, hidden, self.latent, dropout)
        self.decoder = _dense_stack(self.latent, list(hidden)[::-1], n_num + sum(cards), dropout)
        self.target_index = CategoryIndex(cards, shared_table=False) if cards else None

    def _check(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.error_parts:
            raise ValueError(f"tab_autoencoder expects rows [N, {self.error_parts}], got {tuple(x.shape)}")

    def encode(self, x: Tensor) -> Tensor:
        self._check(x)
        return self.encoder(self.embed(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encode(x))

    def errors(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        target = x if target is None else target
        self._check(target)
        out = self(x)
        parts = []
        if self.n_num:
            parts.append((out[:, :self.n_num] - target[:, :self.n_num]).square())
        if self.target_index is not None:
            idx = self.target_index(target[:, self.n_num:])
            start = self.n_num
            for j, card in enumerate(self.cardinalities):
                logits = out[:, start:start + card]
                start += card
                true = torch.gather(logits, 1, idx[:, j:j + 1])
                parts.append(torch.logsumexp(logits, dim=1, keepdim=True) - true)  # cross-entropy, >= 0
        return torch.cat(parts, dim=1).clamp_min(0.0)

    def corrupt(self, x: Tensor, level: float, generator: torch.Generator | None = None) -> Tensor:
        """Numerics + N(0, level^2); each category cell -> 0 ("unknown") with probability min(level, 0.5)."""
        level = _check_level(level)
        if level == 0:
            return x
        self._check(x)
        parts = []
        if self.n_num:
            parts.append(_gaussian(x[:, :self.n_num], level, generator))
        if self.cardinalities:
            cats = x[:, self.n_num:]
            u = torch.rand(cats.shape, generator=generator, device=generator.device if generator else x.device)
            parts.append(torch.where(u.to(x.device) < min(level, 0.5), torch.zeros_like(cats), cats))
        return torch.cat(parts, dim=1)


_MAX_CODE_MAP = 1 << 17  # values in the last encoder map (64 x 32 x 32 = 128x128 images with the defaults)


def _conv_plan(size: tuple[int, int], n_stages: int) -> list[tuple[int, tuple[int, int], tuple[int, int]]]:
    """Per encoder stage: (stride, map size before, map size after). Stride 2 while the smaller side
    is >= 4 (so the map never drops below 2x2), stride 1 after that."""
    plan = []
    h, w = size
    for _ in range(n_stages):
        if min(h, w) >= 4:
            nh, nw = (h + 1) // 2, (w + 1) // 2  # 3x3, padding 1, stride 2: ceil(n / 2)
            plan.append((2, (h, w), (nh, nw)))
            h, w = nh, nw
        else:
            plan.append((1, (h, w), (h, w)))
    return plan


@register_model("conv_autoencoder")
class ConvAutoencoder(nn.Module):
    """Convolutional autoencoder for images ``(C, H, W)``, e.g. 8x8 to 128x128 with the default widths
    (larger images need more entries in ``channels``: each downsamples once more).

    Encoder: per width in ``channels`` a 3x3 conv (stride 2 while the map is >= 4x4, else 1) + SiLU
    and a 3x3 conv + SiLU, then Flatten -> Linear to ``latent``. Decoder mirrors it: Linear ->
    the last map, per stage a 3x3 conv + SiLU and a 3x3 transposed conv (stride 2, output padding
    chosen per axis so the map grows back to exactly the encoder's size) + SiLU, then a 3x3 conv to
    ``C`` channels with no activation (inputs are standardised). Output shape == input shape, no
    cropping or interpolation. ``errors`` is the per-row MSE (``P = 1``); ``num_outputs`` is ignored.
    """

    kind = "autoencoder"
    error_parts = 1

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        latent: int = 16,
        channels: Sequence[int] = (32, 64),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"conv_autoencoder needs image inputs (C, H, W), got input shape {tuple(input_shape)}")
        c, h, w = (int(s) for s in input_shape)
        if c < 1 or h < 2 or w < 2:
            raise ValueError(f"conv_autoencoder needs >= 1 channel and images of at least 2x2, got {(c, h, w)}")
        if not channels or any(int(ch) != ch or ch < 1 for ch in channels):
            raise ValueError(f"channels must be a non-empty list of positive widths, got {list(channels)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.input_shape = (c, h, w)
        self.latent = _check_latent(latent)
        widths = [int(ch) for ch in channels]
        plan = _conv_plan((h, w), len(widths))

        enc: list[nn.Module] = []
        in_ch = c
        for out_ch, (stride, _, _) in zip(widths, plan):
            enc += [nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1), nn.SiLU(),
                    nn.Conv2d(out_ch, out_ch, 3, padding=1), nn.SiLU()]
            in_ch = out_ch
        self.features = nn.Sequential(*enc)
        self.code_shape = (widths[-1], *plan[-1][2])
        flat = math.prod(self.code_shape)
        if flat > _MAX_CODE_MAP:
            raise ValueError(f"conv_autoencoder: a {h}x{w} image leaves a {self.code_shape} map ({flat} values) before "
                             f"the latent Linear (limit {_MAX_CODE_MAP}); list more widths in channels to downsample more")
        self.to_latent = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(flat, self.latent))

        self.from_latent = nn.Sequential(nn.Linear(self.latent, flat), nn.SiLU(), nn.Unflatten(1, self.code_shape))
        dec: list[nn.Module] = []
        outs = widths[-2::-1] + [widths[0]]  # mirror: each stage goes back to the previous stage's width
        for i, (stride, before, after) in enumerate(reversed(plan)):
            out_ch = outs[i]
            dec += [nn.Conv2d(in_ch, in_ch, 3, padding=1), nn.SiLU()]
            if stride == 2:
                pad = (before[0] - (2 * after[0] - 1), before[1] - (2 * after[1] - 1))  # 0 (odd) or 1 (even)
                dec.append(nn.ConvTranspose2d(in_ch, out_ch, 3, stride=2, padding=1, output_padding=pad))
            else:
                dec.append(nn.Conv2d(in_ch, out_ch, 3, padding=1))
            dec.append(nn.SiLU())
            in_ch = out_ch
        dec.append(nn.Conv2d(in_ch, c, 3, padding=1))
        self.decoder = nn.Sequential(*dec)

    def _check(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"conv_autoencoder expects images [N, {', '.join(map(str, self.input_shape))}], "
                             f"got {tuple(x.shape)}")

    def encode(self, x: Tensor) -> Tensor:
        self._check(x)
        return self.to_latent(self.features(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.from_latent(self.encode(x)))

    def errors(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        target = x if target is None else target
        self._check(target)
        return _row_mse(self(x), target)

    def corrupt(self, x: Tensor, level: float, generator: torch.Generator | None = None) -> Tensor:
        """Every pixel + N(0, level^2)."""
        level = _check_level(level)
        return x if level == 0 else _gaussian(x, level, generator)


@register_model("autoencoder")
class Autoencoder(nn.Module):
    """Dense autoencoder over any fixed input shape (flattened; e.g. 1x8x8 digits, or a (F,) row of
    numbers): MLP ``hidden`` -> Linear to ``latent``; the mirrored MLP -> the input's shape.
    ``errors`` is the per-row MSE (``P = 1``); ``num_outputs`` is ignored.
    """

    kind = "autoencoder"
    error_parts = 1

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        latent: int = 8,
        hidden: Sequence[int] = (128, 64),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        shape = tuple(int(s) for s in input_shape)
        if not shape or any(s < 1 for s in shape):
            raise ValueError(f"autoencoder needs a fixed input shape of positive sizes, got {tuple(input_shape)}")
        self.input_shape = shape
        self.latent = _check_latent(latent)
        width = math.prod(shape)
        self.encoder = nn.Sequential(nn.Flatten(), *_dense_stack(width, hidden, self.latent, dropout))
        self.decoder = nn.Sequential(*_dense_stack(self.latent, list(hidden)[::-1], width, dropout),
                                     nn.Unflatten(1, shape))

    def _check(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"autoencoder expects inputs [N, {', '.join(map(str, self.input_shape))}], "
                             f"got {tuple(x.shape)}")

    def encode(self, x: Tensor) -> Tensor:
        self._check(x)
        return self.encoder(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encode(x))

    def errors(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        target = x if target is None else target
        self._check(target)
        return _row_mse(self(x), target)

    def corrupt(self, x: Tensor, level: float, generator: torch.Generator | None = None) -> Tensor:
        """Every element + N(0, level^2)."""
        level = _check_level(level)
        return x if level == 0 else _gaussian(x, level, generator)
