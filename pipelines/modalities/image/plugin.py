"""Images as fixed-shape arrays (today scikit-learn's 8x8 digits): the ``image`` modality.

collect writes ``data.npz`` (``X`` float32 ``[N, C, H, W]`` raw pixel values, ``y`` the targets:
integer labels whose text, ``str(y)``, is the class name) and a profile; split fits one mean/std over all train pixels (JSON state) and
saves the raw pixels; the network trains on standardised pixels, and export bakes the same
standardisation into the graph (``pipelines.export.Deployable``), so clients send raw pixel values.
``train.augment`` shifts training images by up to one pixel. Baselines see flattened standardised
pixels. The request side (schema, validation) is ``serve.py`` beside this file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.files import load_arrays, save_arrays, sha256_arrays
from pipelines.params import DataParams, Params, section_dict
from pipelines.plugins import Exported, Fitted, Loaded, Modality, ParityCase, Task, get_task, register_modality
from pipelines.sources import load_source, source_modality, validate_dataset

log = logging.getLogger(__name__)



def random_shift(x: Any, max_shift: int = 1) -> Any:
    """Shift each image of a ``[N, C, H, W]`` batch by up to ``max_shift`` pixels (background-padded)."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s), value=float(x.amin()))
    dy = torch.randint(0, 2 * s + 1, (n,))
    dx = torch.randint(0, 2 * s + 1, (n,))
    out = torch.empty_like(x)
    for oy in range(2 * s + 1):
        for ox in range(2 * s + 1):
            sel = (dy == oy) & (dx == ox)
            if sel.any():
                out[sel] = padded[sel, :, oy:oy + h, ox:ox + w]
    return out


@register_modality
class Images(Modality):
    name = "image"
    request_side = "pipelines.modalities.image.serve:ImageRequests"

    def claims(self, data: DataParams) -> bool:
        return not data.text and source_modality(data.source) == self.name

    def collect(self, params: Params, out: Path) -> dict[str, Any]:
        ds = load_source(params.data)
        # array sources are classification unless told otherwise (digits refuses regression itself)
        task = get_task("classification" if params.data.task == "auto" else params.data.task)
        checks = validate_dataset(ds, task.name)
        prof = {
            "source": ds.origin, "task": task.name, "rows": int(len(ds.X)),
            "schema": {"features": {"shape": list(ds.X.shape[1:]), "dtype": str(ds.X.dtype)},
                       "target": {"dtype": str(ds.y.dtype)}},
            "value_range": list(ds.value_range) if ds.value_range else None,
            "observed_range": [float(ds.X.min()), float(ds.X.max())],
            "data_hash": sha256_arrays(ds.X, ds.y), "checks_passed": checks,
            # class names are the labels' text ("0".."9"): the task encodes them the same way in split
            **task.target_profile(ds.y), "params": section_dict(params.data),
        }
        save_arrays(out / "data.npz", X=ds.X.astype(np.float32), y=ds.y)
        return prof

    def load(self, collect_dir: Path, profile: dict[str, Any]) -> Loaded:
        path = collect_dir / "data.npz"
        data = load_arrays(path, "X", "y")
        X = data["X"]
        return Loaded(data=X, targets=data["y"], keys=X.reshape(len(X), -1), where=str(path))

    def fit(self, params: Params, loaded: Loaded, parts: dict[str, np.ndarray], profile: dict[str, Any],
            out: Path) -> Fitted:
        train = loaded.data[parts["train"]]
        # one mean/std over all pixels keeps images comparable across positions
        state = {"kind": "standardize_global", "mean": float(train.mean()), "std": float(train.std()) or 1.0,
                 "rows": int(len(train))}
        return Fitted(state=state, X=loaded.data, summary={"input_shape": list(loaded.data.shape[1:])})

    def model_inputs(self, X: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        return (X.astype(np.float32) - np.float32(state["mean"])) / np.float32(state["std"])

    def augmenter(self, state: dict[str, Any]) -> Callable[[Any], Any] | None:
        return random_shift

    def baselines(self, task: Task, split_dir: Path, state: dict[str, Any]) -> dict[str, Callable[[], Any]]:
        return task.baseline_factories([])

    def export(self, head: Any, split_dir: Path, state: dict[str, Any], split: dict[str, Any], out: Path,
               output_name: str) -> Exported:
        import torch

        from pipelines.data import load_split
        from pipelines.export import INPUT_NAME, Deployable, export_onnx

        input_shape = split["input_shape"]
        model = Deployable(head, state, input_shape).eval()
        X_test = np.ascontiguousarray(load_split(split_dir, "test", preprocess=False)[0], dtype=np.float32)
        info = export_onnx(model, input_shape, out / "model.onnx", output_name=output_name)
        with torch.no_grad():
            reference = model(torch.from_numpy(X_test)).numpy()
        schema = {"name": INPUT_NAME, "shape": [-1, *input_shape], "dtype": "float32",
                  "value_range": split.get("value_range")}
        return Exported(input_schema=schema, cases=[ParityCase({INPUT_NAME: X_test}, reference)], info=info,
                        example=X_test[:2])

