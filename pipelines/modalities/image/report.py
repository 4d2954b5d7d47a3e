"""Evaluation pictures for images: a grid of the most confidently wrong test images."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["most_confident_wrong", "wrong_grid_png"]

CELL_INCHES, DPI, MAX_NAME = 2.2, 100, 14


def most_confident_wrong(y_true: np.ndarray, proba: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Indices of up to ``k`` wrong rows, most confident first (ties: lower index first), their
    predicted classes, and how many rows are wrong. Rows with non-finite probabilities count as
    wrong and come last."""
    finite = np.isfinite(proba).all(axis=1)
    pred = np.where(finite, np.nan_to_num(proba, nan=-np.inf).argmax(axis=1), -1)
    wrong = np.flatnonzero(pred != y_true)
    conf = np.where(finite[wrong], proba[wrong, np.maximum(pred[wrong], 0)], -np.inf)
    order = wrong[np.argsort(-conf, kind="stable")][:k]
    return order, pred[order], int(len(wrong))


def _name(classes: list[str], i: int) -> str:
    text = str(classes[i]) if 0 <= i < len(classes) else "?"
    return text if len(text) <= MAX_NAME else text[: MAX_NAME - 1] + "…"


def _check(images: np.ndarray, y_true: np.ndarray, proba: np.ndarray, classes: list[str], k: int) -> None:
    if images.ndim != 4 or images.shape[1] not in (1, 3, 4):
        raise ValueError(f"images must be [N, C, H, W] with C in 1, 3, 4; got shape {images.shape}")
    if proba.ndim != 2 or proba.shape[1] != len(classes):
        raise ValueError(f"proba must be [N, {len(classes)}] (one column per class), got shape {proba.shape}")
    if not len(images) == len(y_true) == len(proba):
        raise ValueError(f"row counts differ: images {len(images)}, y_true {len(y_true)}, proba {len(proba)}")
    if len(y_true) and (y_true.min() < 0 or y_true.max() >= len(classes)):
        raise ValueError(f"y_true holds labels outside 0..{len(classes) - 1}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def wrong_grid_png(images: np.ndarray, y_true: np.ndarray, proba: np.ndarray, classes: list[str],
                   path: str | Path, k: int = 16) -> dict[str, Any]:
    """Write a PNG grid of the ``k`` most confidently wrong images, each titled
    ``true X / pred Y (p=0.97)``; with none wrong, a small PNG that says so.

    Args:
        images: ``[N, C, H, W]`` pixels, C in 1 (grey), 3 (RGB), 4 (RGBA); uint8 is shown as 0..255,
            any other dtype stretched over the shown images' own min..max.
        y_true: ``[N]`` integer labels (indices into ``classes``).
        proba: ``[N, K]`` class probabilities.
        classes: the K class names.

    Returns:
        ``{"path", "total", "wrong", "shown": [row indices], "rows": [{"index", "true", "pred", "p"}]}``.
    """
    from matplotlib.figure import Figure  # no pyplot: no backend or GUI machinery to import

    images, y_true, proba = np.asarray(images), np.asarray(y_true).astype(np.int64), np.asarray(proba, np.float64)
    _check(images, y_true, proba, classes, k)
    shown, pred, n_wrong = most_confident_wrong(y_true, proba, k)
    rows = [{"index": int(i), "true": _name(classes, int(y_true[i])), "pred": _name(classes, int(p)),
             "p": float(proba[i, p]) if p >= 0 else float("nan")} for i, p in zip(shown, pred)]
    if not len(shown):
        fig = Figure(figsize=(4, 1.2))
        fig.text(0.5, 0.5, f"no wrong predictions among {len(y_true)} test images", ha="center", va="center")
    else:
        ncols = math.ceil(math.sqrt(len(shown)))
        nrows = math.ceil(len(shown) / ncols)
        fig = Figure(figsize=(ncols * CELL_INCHES, nrows * CELL_INCHES + 0.4))
        picked = images[shown]
        vmin, vmax = (0, 255) if images.dtype == np.uint8 else (float(picked.min()), float(picked.max()))
        for ax in fig.subplots(nrows, ncols, squeeze=False).ravel():
            ax.set_axis_off()
        for pos, (image, row) in enumerate(zip(picked, rows)):
            ax = fig.axes[pos]
            hwc = np.moveaxis(image, 0, -1)
            if hwc.shape[-1] == 1:
                ax.imshow(hwc[..., 0], cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
            else:  # colour: imshow takes uint8 as is, floats in 0..1
                rgb = hwc if images.dtype == np.uint8 else np.clip((hwc - vmin) / ((vmax - vmin) or 1.0), 0, 1)
                ax.imshow(rgb, interpolation="nearest")
            ax.set_title(f"true {row['true']} / pred {row['pred']} (p={row['p']:.2f})", fontsize=7)
        fig.suptitle(f"most confidently wrong: {len(shown)} of {n_wrong} wrong / {len(y_true)} test images",
                     fontsize=9)
        fig.tight_layout()
    fig.savefig(str(path), dpi=DPI, format="png")
    return {"path": str(path), "total": int(len(y_true)), "wrong": n_wrong, "shown": [int(i) for i in shown],
            "rows": rows}
