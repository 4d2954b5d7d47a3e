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
    """``(X, y)`` of one split; ``X`` as the network takes it unless ``preprocess`` is False (as saved).

    ``X`` is whatever the modality's ``saved_inputs`` / ``model_inputs`` give: an array, or for data
    larger than memory an array-like (a memmap, rows computed when sliced: ``X[a:b]``)."""
    state = preprocess_state(split_dir)
    modality = get_modality(state["modality"])
    X = modality.saved_inputs(Path(split_dir), name, state)
    if preprocess:
        X = modality.model_inputs(X, state)
    return X, load_arrays(Path(split_dir) / f"{name}.npz", "y")["y"]
