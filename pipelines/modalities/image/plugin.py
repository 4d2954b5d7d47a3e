"""Images: the ``image`` modality, in two storages.

**Decoded images** (``folder:<dir>`` photo folders, ``idx:<dir>`` MNIST files, ``csv:<path>`` with
``data.image``): collect decodes every file once with ``decode.py`` (the code the service and batch
prediction run) to ``image.size`` x ``image.channels`` into a uint8 ``images.npy`` (``cache.py``),
plus ``rows.npz`` (labels, names, pixel digests) and a profile with class counts, size/channel
histograms, exact duplicates and bad files. split writes each split's uint8 ``<split>_images.npy``
and per-channel mean/std of the train rows; training streams standardised batches read from it;
export bakes the standardisation into the graph, which takes raw 0..255 float32 pixels.
``train.augment: auto`` is random crop + flip (``augment.py``) for photos, off for IDX digits.
Baselines see pixels average-pooled to about 16x16 (gray) or 8x8 (color).

**Fixed-shape arrays** (scikit-learn's 8x8 digits): collect writes ``data.npz`` (``X`` float32
``[N, C, H, W]`` raw pixel values, ``y`` the targets: integer labels whose text, ``str(y)``, is the
class name) and a profile; split fits one mean/std over all train pixels (JSON state) and saves the
raw pixels; the network trains on standardised pixels, and export bakes the same standardisation
into the graph (``pipelines.export.Deployable``), so clients send raw pixel values.
``train.augment: true`` shifts training images by up to one pixel (``auto``: off). Baselines see
flattened standardised pixels. The request side (schema, validation) is ``serve.py`` beside this file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.files import DataError, ParamsError, load_arrays, save_arrays, sha256_arrays
from pipelines.params import DataParams, Params, section_dict
from pipelines.plugins import Exported, Fitted, Loaded, Modality, ParityCase, Task, get_task, register_modality
from pipelines.sources import Dataset, ImageArrays, ImageFiles, load_source, source_modality, validate_dataset

log = logging.getLogger(__name__)

CACHE, ROWS = "images.npy", "rows.npz"
DECODED = "image_cache"  # preprocess.json kind of decoded images (else: the digits' global standardisation)
PARITY_ROWS = 2000  # test images checked ONNX vs torch at deploy


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
        return bool(data.image) or (not data.text and source_modality(data.source) == self.name)

    def collect(self, params: Params, out: Path) -> dict[str, Any]:
        ds = load_source(params.data)
        if isinstance(ds, (ImageFiles, ImageArrays)):
            return self._collect_decoded(ds, params, out)
        if not isinstance(ds, Dataset):
            raise ParamsError(f"data.image: {params.data.source!r} is not a source of image paths (use a "
                              "csv:<path> file with an image-path column, folder:<dir> or idx:<dir>)")
        # array sources are classification unless told otherwise (digits refuses regression itself)
        task = get_task("classification" if params.data.task == "auto" else params.data.task, params)
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

    def _collect_decoded(self, ds: ImageFiles | ImageArrays, params: Params, out: Path) -> dict[str, Any]:
        from pipelines.modalities.image.cache import write_cache

        task = get_task("classification" if params.data.task == "auto" else params.data.task, params)
        if task.target_kind != "labels":
            raise ParamsError(f"data.task: image files have class labels (folders, a label column), so {task.name!r} "
                              "does not apply")
        size = tuple(params.image.size)
        cache = write_cache(ds, size, params.image.channels, params.data.bad_images, out, CACHE)
        labels = np.asarray(cache.labels)
        if len(np.unique(labels)) < 2:
            raise DataError(f"{ds.origin}: a single class ({labels[0]}) among {cache.rows} usable images, "
                            "need at least 2")
        keys = np.frombuffer(b"".join(cache.keys), np.uint8).reshape(cache.rows, -1)
        save_arrays(out / ROWS, y=labels, names=np.asarray(cache.names), keys=keys)
        photos = isinstance(ds, ImageFiles)
        facts = cache.facts()
        shape = [cache.channels, *size]
        log.info("%s: %d images decoded to %s uint8 (%d bad skipped, %d exact duplicates)", ds.origin, cache.rows,
                 "x".join(map(str, shape)), facts["bad_files"]["count"], facts["duplicates"]["rows"])
        return {
            "source": ds.origin, "task": task.name, "rows": cache.rows,
            "schema": {"features": {"shape": shape, "dtype": "uint8"}, "target": {"dtype": str(labels.dtype)}},
            "value_range": [0.0, 255.0],
            "image": {"size": list(size), "channels": cache.channels, "channels_param": params.image.channels,
                      "photos": photos, "cache": CACHE, **facts},
            "data_hash": sha256_arrays(keys, labels),
            "checks_passed": ["non_empty", "images_decoded", "at_least_two_classes"],
            **task.target_profile(labels), "params": section_dict(params.data),
            "image_params": section_dict(params.image),
        }

    def load(self, collect_dir: Path, profile: dict[str, Any]) -> Loaded:
        if "image" in profile:  # decoded images: the uint8 cache stays on disk, read in row blocks
            rows = load_arrays(collect_dir / ROWS, "y", "names", "keys")
            data = {"images": collect_dir / profile["image"]["cache"], "names": rows["names"]}
            return Loaded(data=data, targets=rows["y"], keys=rows["keys"], where=str(collect_dir / ROWS))
        path = collect_dir / "data.npz"
        data = load_arrays(path, "X", "y")
        X = data["X"]
        return Loaded(data=X, targets=data["y"], keys=X.reshape(len(X), -1), where=str(path))

    def fit(self, params: Params, loaded: Loaded, parts: dict[str, np.ndarray], profile: dict[str, Any],
            out: Path) -> Fitted:
        if "image" in profile:
            return self._fit_decoded(loaded, parts, profile, out)
        train = loaded.data[parts["train"]]
        # one mean/std over all pixels keeps images comparable across positions
        state = {"kind": "standardize_global", "mean": float(train.mean()), "std": float(train.std()) or 1.0,
                 "rows": int(len(train))}
        return Fitted(state=state, X=loaded.data, summary={"input_shape": list(loaded.data.shape[1:])})

    def _fit_decoded(self, loaded: Loaded, parts: dict[str, np.ndarray], profile: dict[str, Any],
                     out: Path) -> Fitted:
        from pipelines.modalities.image.cache import NpyRows, write_splits

        files = {name: f"{name}_images.npy" for name in parts}
        mean, std = write_splits(loaded.data["images"], parts, {k: out / v for k, v in files.items()})
        names, shape = loaded.data["names"], NpyRows(loaded.data["images"]).shape
        info = profile["image"]
        state = {"kind": DECODED, "mean": mean, "std": std, "rows": int(len(parts["train"])),
                 "size": info["size"], "channels": info["channels"], "photos": info["photos"], "files": files}
        log.info("per-channel mean %s, std %s over %d train images", np.round(mean, 2).tolist(),
                 np.round(std, 2).tolist(), len(parts["train"]))
        summary = {"input_shape": list(shape[1:]), "image": {"size": info["size"], "channels": info["channels"]}}
        return Fitted(state=state, X=None, summary=summary, extras={"names": names})

    def saved_inputs(self, split_dir: Path, name: str, state: dict[str, Any]) -> np.ndarray:
        if state.get("kind") == DECODED:  # uint8 rows read from the file when sliced
            from pipelines.modalities.image.cache import NpyRows

            return NpyRows(Path(split_dir) / state["files"][name])  # type: ignore[return-value]
        return super().saved_inputs(split_dir, name, state)

    def model_inputs(self, X: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        if state.get("kind") == DECODED:
            from pipelines.modalities.image.cache import StandardizedImages

            return StandardizedImages(X, state["mean"], state["std"])  # type: ignore[return-value]
        return (X.astype(np.float32) - np.float32(state["mean"])) / np.float32(state["std"])

    def dataset(self, split_dir: Path, name: str, state: dict[str, Any], targets: Any) -> Any:
        if state.get("kind") == DECODED:
            from pipelines.modalities.image.cache import StreamedImages

            return StreamedImages(Path(split_dir) / state["files"][name], state["mean"], state["std"], targets)
        return super().dataset(split_dir, name, state, targets)

    def augments_by_default(self, state: dict[str, Any]) -> bool:
        return bool(state.get("photos"))  # photos: crop + flip; digits (8x8, IDX) are not flipped

    def augmenter(self, state: dict[str, Any]) -> Callable[[Any], Any] | None:
        if state.get("photos"):
            from pipelines.modalities.image.augment import photo_augmenter

            return photo_augmenter(state)
        return random_shift

    def baselines(self, task: Task, split_dir: Path, state: dict[str, Any]) -> dict[str, Callable[[], Any]]:
        return task.baseline_factories([])

    def baseline_inputs(self, split_dir: Path, state: dict[str, Any]) -> dict[str, Any]:
        """Decoded images: pixels average-pooled to about 16x16 (gray) or 8x8 (color), scaled to 0..1."""
        if state.get("kind") != DECODED:
            return super().baseline_inputs(split_dir, state)
        from pipelines.modalities.image.cache import pooled

        side = 16 if state["channels"] == 1 else 8
        return {name: pooled(self.saved_inputs(split_dir, name, state), side) for name in ("train", "val", "test")}

    def error_analysis(self, split_dir: Path, worst: list[dict[str, Any]]) -> dict[str, list[tuple]]:
        """Decoded images: the files of the test images the model got most confidently wrong."""
        path = Path(split_dir) / "test.npz"
        try:
            names = load_arrays(path, "names")["names"]
        except DataError:
            return {}
        return {"confidently_wrong.csv": [("file", "label", "predicted", "confidence"),
                                          *((names[w["row"]], w["actual"], w["predicted"], w["score"]) for w in worst)]}

    def error_plots(self, split_dir: Path, worst: list[dict[str, Any]], plots: Path) -> list[str]:
        """``confidently_wrong.png``: a grid of the test images the model got most confidently wrong."""
        from pipelines.data import preprocess_state
        from pipelines.files import read_json
        from pipelines.modalities.image.report import wrong_grid_png

        classes = read_json(Path(split_dir) / "split.json").get("classes")
        if not classes:  # a task without classes (regression): no grid of wrong labels
            return []
        index = {c: i for i, c in enumerate(classes)}
        rows = np.asarray([w["row"] for w in worst], np.int64)
        images = self.saved_inputs(split_dir, "test", preprocess_state(split_dir))
        pixels = images[rows] if len(rows) else np.zeros((0, *images.shape[1:]), images.dtype)
        # each shown row's probabilities as far as ``worst`` tells: the predicted class's, the rest spread
        k = len(classes)
        proba = np.full((len(rows), k), 0.0)
        for j, w in enumerate(worst):
            proba[j] = (1.0 - w["score"]) / max(k - 1, 1)
            proba[j, index[w["predicted"]]] = w["score"]
        y_true = np.asarray([index[w["actual"]] for w in worst], np.int64)
        wrong_grid_png(pixels, y_true, proba, classes, plots / "confidently_wrong.png")
        return ["confidently_wrong.png"]

    def export(self, head: Any, split_dir: Path, state: dict[str, Any], split: dict[str, Any], out: Path,
               output_name: str) -> Exported:
        import torch

        from pipelines.data import load_split
        from pipelines.export import INPUT_NAME, Deployable, export_onnx

        input_shape = split["input_shape"]
        decoded = state.get("kind") == DECODED
        if decoded:  # per-channel statistics, broadcast over each channel's pixels
            c = input_shape[0]
            pre = {k: np.array(np.broadcast_to(np.asarray(state[k], np.float32).reshape(c, 1, 1), input_shape))
                   for k in ("mean", "std")}
        model = Deployable(head, pre if decoded else state, input_shape).eval()
        X_raw = load_split(split_dir, "test", preprocess=False)[0]
        X_test = np.ascontiguousarray(X_raw[:PARITY_ROWS] if decoded else X_raw, dtype=np.float32)
        info = export_onnx(model, input_shape, out / "model.onnx", output_name=output_name)
        with torch.no_grad():
            reference = np.concatenate([model(torch.from_numpy(X_test[i:i + 256])).numpy()
                                        for i in range(0, len(X_test), 256)])
        schema = {"name": INPUT_NAME, "shape": [-1, *input_shape], "dtype": "float32",
                  "value_range": split.get("value_range")}
        if decoded:  # how the service and batch prediction turn file bytes into this input (decode.py)
            schema["image"] = {"size": state["size"], "channels": state["channels"]}
        return Exported(input_schema=schema, cases=[ParityCase({INPUT_NAME: X_test}, reference)], info=info,
                        example=X_test[:2])

