"""Reading split outputs as the network sees them (the modality's ``model_inputs`` applied)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipelines.files import load_arrays, read_json
from pipelines.plugins import SPLITS, get_modality

__all__ = ["SPLITS", "load_split", "preprocess_state"]


def preprocess_state(split_dir: Path) -> dict[str, Any]:
    """preprocess.json: the modality's train-fitted state, its name, and the task's ``target`` state."""
    return read_json(Path(split_dir) / "preprocess.json")


def load_split(split_dir: Path, name: str, preprocess: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` of one split; ``X`` as the network takes it unless ``preprocess`` is False (as saved)."""
    arrays = load_arrays(Path(split_dir) / f"{name}.npz", "X", "y")
    X = arrays["X"]
    if preprocess:
        state = preprocess_state(split_dir)
        X = get_modality(state["modality"]).model_inputs(X, state)
    return X, arrays["y"]
