"""Data sources: a small pluggable interface. A source turns ``data`` params into a ``Dataset``.

Register a new one with ``@register_source("kind:name")``; ``data.source`` picks it by name.
Every dataset goes through ``validate_dataset`` before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from pipelines.files import DataError
from pipelines.params import DataParams, ParamsError

Kind = Literal["image", "tabular", "text"]


@dataclass(frozen=True)
class Dataset:
    """Features + target as arrays. Images are float32 ``(N, C, H, W)``."""

    X: np.ndarray
    y: np.ndarray
    kind: Kind
    origin: str  # what to name in errors: a file path or the source name
    class_names: tuple[str, ...] = ()
    value_range: tuple[float, float] | None = None  # documented range of feature values
    meta: dict = field(default_factory=dict)


SourceFn = Callable[[DataParams], Dataset]
_SOURCES: dict[str, SourceFn] = {}


def register_source(name: str) -> Callable[[SourceFn], SourceFn]:
    def deco(fn: SourceFn) -> SourceFn:
        if name in _SOURCES:
            raise ValueError(f"data source {name!r} registered twice")
        _SOURCES[name] = fn
        return fn

    return deco


def list_sources() -> list[str]:
    return sorted(_SOURCES)


def load_source(params: DataParams) -> Dataset:
    try:
        fn = _SOURCES[params.source]
    except KeyError:
        raise ParamsError(
            f"data.source: unknown source {params.source!r} (valid: {', '.join(list_sources())})"
        ) from None
    return fn(params)


@register_source("sklearn:digits")
def sklearn_digits(params: DataParams) -> Dataset:
    """scikit-learn's bundled UCI handwritten digits: 1,797 8x8 images, pixel values 0..16."""
    from sklearn.datasets import load_digits

    if params.task != "classification":
        raise ParamsError(f"data.task: sklearn:digits is a classification dataset, got {params.task!r}")
    bunch = load_digits()
    X = bunch.images.astype(np.float32)[:, None, :, :]
    return Dataset(
        X=X,
        y=bunch.target.astype(np.int64),
        kind="image",
        origin="sklearn:digits",
        class_names=tuple(str(c) for c in bunch.target_names),
        value_range=(0.0, 16.0),
    )


def validate_dataset(ds: Dataset, task: str) -> list[str]:
    """Raise ``DataError`` naming origin/row/column on bad data; return the checks that passed."""
    X, y, where = ds.X, ds.y, ds.origin
    if len(X) == 0:
        raise DataError(f"{where}: dataset is empty (0 rows)")
    if len(X) != len(y):
        raise DataError(f"{where}: {len(X)} feature rows but {len(y)} targets")
    checks = ["non_empty", "rows_match_targets"]
    if not np.issubdtype(X.dtype, np.number):
        raise DataError(f"{where}: features must be numeric, got dtype {X.dtype}")
    flat = X.reshape(len(X), -1)
    bad = ~np.isfinite(flat)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise DataError(
            f"{where}: row {row}, column {col}: non-finite value {flat[row, col]} "
            f"({int(bad.sum())} non-finite values in {int(bad.any(axis=1).sum())} rows)"
        )
    checks.append("features_finite")
    if ds.value_range is not None:
        lo, hi = ds.value_range
        out = (flat < lo) | (flat > hi)
        if out.any():
            row, col = map(int, np.argwhere(out)[0])
            raise DataError(f"{where}: row {row}, column {col}: value {flat[row, col]} outside [{lo}, {hi}]")
        checks.append("features_in_range")
    checks += _validate_target(y, task, where)
    return checks


def _validate_target(y: np.ndarray, task: str, where: str) -> list[str]:
    if y.ndim != 1:
        raise DataError(f"{where}: target must be one column, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.number):
        raise DataError(f"{where}: target must be numeric (labels 0..K-1), got dtype {y.dtype}")
    bad = ~np.isfinite(y.astype(np.float64))
    if bad.any():
        raise DataError(f"{where}: row {int(np.argmax(bad))}, column target: non-finite target")
    if task == "regression":
        if np.ptp(y) == 0:
            raise DataError(f"{where}: column target: constant target ({y[0]}), nothing to learn")
        return ["target_finite", "target_varies"]
    if not np.all(np.mod(y, 1) == 0):
        row = int(np.argmax(np.mod(y, 1) != 0))
        raise DataError(f"{where}: row {row}, column target: classification label {y[row]} is not an integer")
    if y.min() < 0:
        raise DataError(f"{where}: row {int(np.argmin(y))}, column target: negative label {y.min()}")
    classes = np.unique(y)
    if len(classes) < 2:
        raise DataError(f"{where}: column target: a single class ({classes[0]}), need at least 2")
    return ["target_finite", "target_integer_labels", "at_least_two_classes"]
