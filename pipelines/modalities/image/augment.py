"""Train-time augmentation for photos: random padded crop and horizontal flip, pure torch.

Works on the standardised float batch ``[N, C, H, W]`` the network trains on, on its device. One
``gather`` per batch does padding, crop and flip together (no loop over images, no padded copy);
random offsets come from torch's default CPU generator, so ``torch.manual_seed`` makes a run
repeatable on any device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["PhotoAugment", "default_pad", "photo_augmenter"]

PADDING_MODES = ("reflect", "replicate")


def default_pad(height: int, width: int) -> int:
    """About 1/8 of the shorter side (4 px at 32x32, 8 px at 64x64), at least 1."""
    return max(1, round(min(height, width) / 8))


@dataclass(frozen=True)
class PhotoAugment:
    """Random crop of the ``pad``-padded image back to ``H x W`` and a horizontal flip with
    probability ``flip_p``, drawn per image.

    Args:
        pad: pixels added on every side before cropping; None: ``default_pad(H, W)``; 0: no crop.
        flip_p: probability of a horizontal flip; 0: no flip.
        padding_mode: ``"reflect"`` (mirror, no border seam) or ``"replicate"`` (edge pixels).
    """

    pad: int | None = None
    flip_p: float = 0.5
    padding_mode: str = "reflect"

    def __post_init__(self) -> None:
        if self.pad is not None and (isinstance(self.pad, bool) or not isinstance(self.pad, int) or self.pad < 0):
            raise ValueError(f"pad must be None or an int >= 0, got {self.pad!r}")
        if not 0.0 <= self.flip_p <= 1.0:
            raise ValueError(f"flip_p must be in [0, 1], got {self.flip_p!r}")
        if self.padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {self.padding_mode!r}")

    def __call__(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"expects a [N, C, H, W] batch, got shape {tuple(x.shape)}")
        n, c, h, w = x.shape
        pad = default_pad(h, w) if self.pad is None else self.pad
        if self.padding_mode == "reflect":  # reflect cannot mirror more than the image holds
            pad = min(pad, h - 1, w - 1)
        if n == 0 or (pad == 0 and self.flip_p == 0):
            return x
        # draws on the CPU generator: the same seed gives the same batch on CPU and GPU
        dy = torch.randint(0, 2 * pad + 1, (n,))
        dx = torch.randint(0, 2 * pad + 1, (n,))
        flip = torch.rand(n) < self.flip_p
        # coordinates in the padded image, mapped back to the source pixel: no padded copy is made
        rows = self._source(dy[:, None] - pad + torch.arange(h), h)  # [N, H]
        cols = torch.arange(w).expand(n, w)
        cols = self._source(dx[:, None] - pad + torch.where(flip[:, None], w - 1 - cols, cols), w)  # [N, W]
        index = (rows[:, :, None] * w + cols[:, None, :]).reshape(n, 1, h * w).to(x.device)
        out = x.reshape(n, c, h * w).gather(2, index.expand(n, c, h * w))
        return out.reshape(n, c, h, w)

    def _source(self, i: Tensor, size: int) -> Tensor:
        """Source index of padded position ``i`` (``-pad <= i < size + pad``) along an axis of ``size``."""
        if self.padding_mode == "reflect":  # mirror without repeating the edge, as F.pad's reflect
            i = i.abs()
            return torch.where(i > size - 1, 2 * (size - 1) - i, i)
        return i.clamp(0, size - 1)


def photo_augmenter(state: dict[str, Any] | None = None, pad: int | None = None, flip_p: float = 0.5,
                    padding_mode: str = "reflect") -> Callable[[Tensor], Tensor]:
    """The modality's train-time batch transform for photos (``Modality.augmenter(state)``).

    ``state`` (the split's preprocessing state) is accepted for the plug-in signature; the transform
    needs nothing from it, as crop and flip commute with a global standardisation.
    """
    del state
    return PhotoAugment(pad=pad, flip_p=flip_p, padding_mode=padding_mode)
