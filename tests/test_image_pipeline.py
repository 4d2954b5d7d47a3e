"""Each decoded-image source (a photo folder, MNIST IDX files, a CSV of paths) through all seven steps
in-process, and the deployed graph checked from image *file bytes* (decode.py -> ONNX) against torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.files import read_json
from tests.conftest import make_params, run_pipeline
from tests.test_image_data import CLASSES, make_csv, make_folder, make_idx

TINY_IMAGES = {
    "model": {"name": "cnn", "kwargs": {"channels": [8, 16], "hidden": 32, "dropout": 0.0}},
    "train": {"epochs": 8, "batch_size": 32, "patience": 8, "augment": "auto"},
    "optim": {"lr": 0.003, "scheduler": "none", "label_smoothing": 0.0},
    "evaluate": {"baselines": ["logreg", "knn"], "min_score": 0.5},
    "image": {"size": [16, 16], "channels": "auto"},
}


def image_run(data: dict, tmp_path: Path, name: str, **over: dict) -> dict:
    sections = {k: dict(v) for k, v in TINY_IMAGES.items()}
    for key, values in over.items():
        sections.setdefault(key, {}).update(values)
    params = make_params(data=data, deploy={"build_bento": False, "register": True, "model_name": name,
                                            "parity_batch_sizes": [1, 7, 64]}, **sections)
    return run_pipeline(params, tmp_path)


def served_matches(work: Path, files: dict[str, bytes], tmp: Path) -> None:
    """The deployed model behind a real ``bentoml serve``: uploaded files get the probabilities that
    decode.py + ONNX Runtime give in-process (the pipeline's own path)."""
    import httpx

    from tests.helpers import serving
    from tests.test_serving_images import check, upload

    with serving(work / "deploy", tmp) as info, httpx.Client(base_url=info["url"], timeout=60) as http:
        check(upload(http, files), work / "deploy", files)


def check_common(tmp_path: Path, channels: int, classes: list[str]) -> dict:
    assert (tmp_path / "evaluate" / "plots" / "confidently_wrong.png").stat().st_size > 0  # evaluate's grid
    split = read_json(tmp_path / "split" / "split.json")
    assert split["kind"] == "image" and split["input_shape"] == [channels, 16, 16]
    metrics = read_json(tmp_path / "evaluate" / "metrics.json")
    assert metrics["accuracy"] > 0.8, metrics  # patterns a child can tell apart; chance is 1/3
    assert {"logreg", "knn"} <= set(metrics["baselines"])
    assert metrics["baselines"]["logreg"]["accuracy"] > 0.8  # downsampled pixels suffice here
    parity = read_json(tmp_path / "deploy" / "parity.json")
    assert parity["passed"] and parity["max_abs_diff"] < 1e-4 and parity["label_agreement"] == 1.0
    manifest = read_json(tmp_path / "deploy" / "manifest.json")
    assert manifest["kind"] == "image" and manifest["classes"] == classes
    assert manifest["input"]["shape"] == [-1, channels, 16, 16] and manifest["input"]["dtype"] == "float32"
    assert manifest["input"]["value_range"] == [0.0, 255.0]
    assert manifest["input"]["image"] == {"size": [16, 16], "channels": channels}
    return manifest


@pytest.mark.slow
def test_folder_through_seven_steps(tmp_path: Path, mlflow_uri: str) -> None:
    from pipelines.train import augmenter

    root = make_folder(tmp_path / "data" / "pets")
    image_run({"source": f"folder:{root}"}, tmp_path / "w", "pets")
    check_common(tmp_path / "w", 3, sorted(CLASSES))
    prof = read_json(tmp_path / "w" / "collect" / "profile.json")
    assert prof["image"]["bad_files"]["count"] == 3
    wrong = (tmp_path / "w" / "evaluate" / "plots" / "confidently_wrong.csv").read_text().splitlines()
    assert wrong[0] == "file,label,predicted,confidence"
    error_grid(tmp_path / "w", tmp_path / "plots")
    # train.augment: auto is crop + flip for photos
    fn = augmenter(make_params(train={"augment": "auto"}), tmp_path / "w" / "split")
    assert type(fn).__name__ == "PhotoAugment"
    assert augmenter(make_params(train={"augment": False}), tmp_path / "w" / "split") is None
    file_bytes_parity(tmp_path / "w", root)
    files = sorted(root.rglob("*.png"))[:3] + sorted(root.rglob("*.jpg"))[:3]
    served_matches(tmp_path / "w", {f.name: f.read_bytes() for f in files}, tmp_path)


def error_grid(work: Path, plots: Path) -> None:
    """The modality's ``error_plots`` hook: a PNG grid of the most confidently wrong test images."""
    from PIL import Image

    from pipelines.plugins import get_modality

    plots.mkdir()
    split = read_json(work / "split" / "split.json")
    worst = [{"row": 0, "actual": split["classes"][0], "predicted": split["classes"][1], "score": 0.9},
             {"row": 3, "actual": split["classes"][2], "predicted": split["classes"][0], "score": 0.6}]
    assert get_modality("image").error_plots(work / "split", worst, plots) == ["confidently_wrong.png"]
    with Image.open(plots / "confidently_wrong.png") as img:
        assert img.format == "PNG" and img.size[0] > 50


def file_bytes_parity(work: Path, root: Path) -> None:
    """Image files -> decode.py (as the service and batch prediction do) -> ONNX == torch on the same pixels."""
    import torch

    from pipelines.evaluate import load_network
    from pipelines.export import INPUT_NAME
    from pipelines.modalities.image.decode import decode
    from serving.runtime import make_session

    manifest = read_json(work / "deploy" / "manifest.json")
    size, channels = manifest["input"]["image"]["size"], manifest["input"]["image"]["channels"]
    files = sorted(root.rglob("*.png"))[:5] + sorted(root.rglob("*.jpg"))[:5]
    pixels = np.stack([decode(f.read_bytes(), f.name, tuple(size), channels) for f in files])
    session = make_session(str(work / "deploy" / "model.onnx"))
    onnx_out = session.run(None, {INPUT_NAME: pixels.astype(np.float32)})[0]
    state = read_json(work / "split" / "preprocess.json")
    mean = np.asarray(state["mean"], np.float32)[:, None, None]
    std = np.asarray(state["std"], np.float32)[:, None, None]
    net = load_network(work / "train" / "model.pt")
    with torch.no_grad():
        ref = net(torch.from_numpy((pixels.astype(np.float32) - mean) / std)).numpy()
    assert np.abs(onnx_out - ref).max() < 1e-4


@pytest.mark.slow
def test_idx_through_seven_steps(tmp_path: Path, mlflow_uri: str) -> None:
    from pipelines.train import augmenter

    root = make_idx(tmp_path / "mnist")
    image_run({"source": f"idx:{root}"}, tmp_path / "w", "mnist-test", image={"size": [16, 16]})
    check_common(tmp_path / "w", 1, ["0", "1", "2"])
    assert augmenter(make_params(train={"augment": "auto"}), tmp_path / "w" / "split") is None  # digits: off
    import io

    from PIL import Image

    from pipelines.plugins import get_modality

    state = read_json(tmp_path / "w" / "split" / "preprocess.json")
    pixels = get_modality("image").saved_inputs(tmp_path / "w" / "split", "test", state)[:4]
    files = {}
    for i, image in enumerate(np.asarray(pixels)):  # test digits as the PNG files a user would upload
        buf = io.BytesIO()
        Image.fromarray(image[0]).save(buf, "PNG")
        files[f"digit{i}.png"] = buf.getvalue()
    served_matches(tmp_path / "w", files, tmp_path)


@pytest.mark.slow
def test_csv_of_paths_through_seven_steps(tmp_path: Path, mlflow_uri: str) -> None:
    csv = make_csv(tmp_path / "data")
    image_run({"source": f"csv:{csv}", "image": "path", "target": "label"}, tmp_path / "w", "csv-images",
              train={"augment": False})
    check_common(tmp_path / "w", 3, sorted(CLASSES))
    assert read_json(tmp_path / "w" / "collect" / "profile.json")["image"]["bad_files"]["count"] == 2
    files = sorted(csv.parent.rglob("*.png"))[:4]
    served_matches(tmp_path / "w", {f.name: f.read_bytes() for f in files}, tmp_path)
