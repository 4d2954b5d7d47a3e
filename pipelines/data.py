"""Reading split outputs and applying the preprocessing state fitted on the train split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipelines.files import DataError, load_arrays, read_json

SPLITS = ("train", "val", "test")


def fit_preprocess(X_train: np.ndarray, kind: str) -> dict[str, Any]:
    """Standardisation fitted on the train split only (JSON, so serving needs no pickle)."""
    if kind == "image":  # one mean/std over all pixels keeps images comparable across positions
        mean, std = float(X_train.mean()), float(X_train.std())
        return {"kind": "standardize_global", "mean": mean, "std": std or 1.0, "rows": int(len(X_train))}
    flat = X_train.reshape(len(X_train), -1)
    std = flat.std(axis=0)
    return {"kind": "standardize_columns", "mean": flat.mean(axis=0).tolist(),
            "std": np.where(std > 0, std, 1.0).tolist(), "rows": int(len(X_train))}


def apply_preprocess(X: np.ndarray, state: dict[str, Any]) -> np.ndarray:
    if state["kind"] == "text":  # token ids (int64), encoded in split by the train-fitted tokenizer
        return X
    X = X.astype(np.float32)
    if state["kind"] == "tabular":  # transformed in split by the fitted ColumnTransformer
        return X
    if state["kind"] == "standardize_global":
        return (X - np.float32(state["mean"])) / np.float32(state["std"])
    if state["kind"] == "standardize_columns":
        shape = X.shape
        flat = X.reshape(len(X), -1)
        out = (flat - np.asarray(state["mean"], np.float32)) / np.asarray(state["std"], np.float32)
        return out.reshape(shape).astype(np.float32)
    raise DataError(f"preprocess.json: unknown preprocessing kind {state['kind']!r}")


def load_split(split_dir: Path, name: str, preprocess: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` of one split, preprocessed with the train-fitted state unless told otherwise."""
    arrays = load_arrays(Path(split_dir) / f"{name}.npz", "X", "y")
    X = arrays["X"]
    if preprocess:
        X = apply_preprocess(X, read_json(Path(split_dir) / "preprocess.json"))
    return X, arrays["y"]


def target_scaler(split_dir: Path) -> dict[str, float] | None:
    """Train-split mean/std of a regression target (the network learns the standardised target)."""
    return read_json(Path(split_dir) / "preprocess.json").get("target_scaler")
