"""The image modality's drift features, per image, from the pixels the graph takes (decoded and
resized as for the service, before the graph standardises them), scaled to 0..1 of the value range:

* ``image.brightness`` and ``image.contrast``: the mean and standard deviation of its pixels;
* ``image.red`` / ``image.green`` / ``image.blue``: the mean of each channel (colour images);
* ``image.edges``: the mean absolute difference between neighbouring pixels (sharpness, noise);
* ``image.orientation``: log of horizontal over vertical edge energy, which a rotation moves;
* the network's penultimate layer (``embedding.*``, ``EMBEDDING``): what the model makes of the content.

The reference images are the validation split's (``saved_inputs``: the raw pixels split saved).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.drift import BATCH, Feature, Numeric, sample_rows

EMBEDDING = True
NEEDS_INPUTS = True  # the features are the pixels the graph takes
CHANNELS = ("red", "green", "blue")


def context(split_dir: Path, state: dict[str, Any], side: Any) -> dict[str, Any]:
    """The value range of the pixels the graph takes (digits 0..16, image files 0..255)."""
    return {"value_range": [float(getattr(side, "lo", 0.0)), float(getattr(side, "hi", 255.0))]}


def reference_batches(split_dir: Path, state: dict[str, Any], name: str, side: Any, ctx: dict[str, Any],
                      limit: int) -> Iterator[tuple[None, dict[str, np.ndarray]]]:
    from pipelines.plugins import get_modality

    X = get_modality(state["modality"]).saved_inputs(Path(split_dir), name, state)
    rows = sample_rows(len(X), limit)
    for i in range(0, len(rows), BATCH):
        yield None, {side.input_name: np.asarray(X[rows[i:i + BATCH]], np.float32)}


def features(items: Any, feeds: dict[str, np.ndarray], side: Any, ctx: dict[str, Any]) -> dict[str, Feature]:
    lo, hi = ctx["value_range"]
    x = (feeds[side.input_name].astype(np.float64) - lo) / (hi - lo)  # [N, C, H, W]
    dx, dy = np.diff(x, axis=3), np.diff(x, axis=2)
    out: dict[str, Feature] = {"image.brightness": Numeric(x.mean((1, 2, 3))),
                               "image.contrast": Numeric(x.std((1, 2, 3)))}
    if x.shape[1] == 3:
        for c, name in enumerate(CHANNELS):
            out[f"image.{name}"] = Numeric(x[:, c].mean((1, 2)))
    out["image.edges"] = Numeric(0.5 * (np.abs(dx).mean((1, 2, 3)) + np.abs(dy).mean((1, 2, 3))))
    eps = 1e-6
    out["image.orientation"] = Numeric(np.log(((dx ** 2).mean((1, 2, 3)) + eps) / ((dy ** 2).mean((1, 2, 3)) + eps)))
    return out
