"""Decoded-image sources (folder:, idx:, csv: + data.image): collect, profile, bad files, split, streaming.

Data is generated here: small PNG/JPEG images of simple distinguishable patterns (dark, bright and
striped), IDX files written with ``struct``, a CSV of relative paths, and the awkward files a real
photo folder holds (corrupt, empty, not an image, a duplicate, RGBA, a palette GIF, an EXIF-rotated JPEG).
"""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import numpy as np
import pytest

from pipelines.files import DataError, ParamsError, load_arrays, read_json
from tests.conftest import make_params

CLASSES = ("dark", "bright", "stripes")


def pattern(label: int, rng: np.random.Generator, size: int = 12) -> np.ndarray:
    """An RGB uint8 image of class ``label``: dark, bright, or vertical stripes (noise on top)."""
    if label == 0:
        img = np.full((size, size, 3), 40, np.int16)
    elif label == 1:
        img = np.full((size, size, 3), 210, np.int16)
    else:
        img = np.zeros((size, size, 3), np.int16)
        img[:, ::2] = 230
    img[..., label % 3] += 20  # a colour cast per class: the images are RGB, not gray
    return np.clip(img + rng.integers(-15, 16, img.shape), 0, 255).astype(np.uint8)


def make_folder(root: Path, per_class: int = 40, seed: int = 0, awkward: bool = True) -> Path:
    """``root/<class>/*.png|jpg`` plus, when ``awkward``, one file of every awkward kind."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = Image.fromarray(pattern(label, rng, size=int(rng.integers(10, 20))))
            img.save(folder / (f"{i:03d}.png" if i % 2 else f"{i:03d}.jpg"), quality=95)
    if awkward:
        add_awkward(root)
    return root


def add_awkward(root: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(99)
    (root / "dark" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(rng.integers(0, 256, 200, dtype=np.uint8)))
    (root / "dark" / "empty.png").write_bytes(b"")
    (root / "dark" / "notes.txt").write_text("not an image\n")
    (root / "dark" / ".DS_Store").write_bytes(b"\x00\x01")  # hidden: ignored
    (root / "bright" / "dup.png").write_bytes((root / "bright" / "001.png").read_bytes())
    rgba = np.dstack([pattern(1, rng), np.full((12, 12), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "bright" / "rgba.png")
    Image.fromarray(pattern(2, rng)).convert("P").save(root / "stripes" / "palette.gif")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: Pillow must turn it upright
    Image.fromarray(pattern(2, rng, size=16)[:, :8]).save(root / "stripes" / "rotated.jpg", exif=exif.tobytes())


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    array = np.ascontiguousarray(array, np.uint8)
    data = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    (path.with_name(path.name + ".gz") if gz else path).write_bytes(gzip.compress(data) if gz else data)


def make_idx(root: Path, n_train: int = 150, n_test: int = 45, gz: bool = True) -> Path:
    """MNIST-like IDX files: 3 classes of 10x10 gray digits-ish patterns (a bar at a class position)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for part, n in (("train", n_train), ("t10k", n_test)):
        y = np.arange(n) % 3
        X = rng.integers(0, 40, (n, 10, 10))
        for i, label in enumerate(y):
            X[i, :, 3 * label:3 * label + 3] += 200
        write_idx(root / f"{part}-images-idx3-ubyte", X, gz)
        write_idx(root / f"{part}-labels-idx1-ubyte", y, gz)
    return root


def make_csv(root: Path, per_class: int = 40) -> Path:
    """``root/labels.csv`` (path, label) over images in ``root/img/`` plus a missing file and an empty label."""
    from PIL import Image

    rng = np.random.default_rng(2)
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines = ["path,label"]
    for label, name in enumerate(CLASSES):
        for i in range(per_class):
            rel = f"img/{name}_{i}.png"
            Image.fromarray(pattern(label, rng)).save(root / rel)
            lines.append(f"{rel},{name}")
    lines += ["img/missing.png,dark", "img/dark_0.png,"]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def image_params(source: str, **data: object):
    return make_params(data={"source": source, **data}, image={"size": [16, 16], "channels": "auto"})


# ---------------------------------------------------------------- collect


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("photos") / "pets")


@pytest.fixture(scope="module")
def collected(photo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipelines import collect

    out = tmp_path_factory.mktemp("collected") / "collect"
    collect.run(image_params(f"folder:{photo_dir}"), out)
    return out


def test_folder_profile(collected: Path) -> None:
    prof = read_json(collected / "profile.json")
    info = prof["image"]
    assert prof["kind"] == "image" and prof["task"] == "classification"
    assert prof["classes"] == sorted(CLASSES)
    # 120 pattern images + dup + rgba + gif + rotated; corrupt, empty, notes.txt are bad; .DS_Store ignored
    assert prof["rows"] == 124
    assert prof["class_balance"] == {"bright": 42, "dark": 40, "stripes": 42}
    bad = {b["path"]: b["reason"] for b in info["bad_files"]["files"]}
    assert info["bad_files"]["count"] == 3
    assert set(bad) == {"dark/corrupt.jpg", "dark/empty.png", "dark/notes.txt"}
    assert "0 bytes" in bad["dark/empty.png"] and "not an image" in bad["dark/notes.txt"]
    assert "corrupt or truncated" in bad["dark/corrupt.jpg"] or "not an image" in bad["dark/corrupt.jpg"]
    assert info["duplicates"]["rows"] == 1
    assert sorted(info["duplicates"]["examples"][0]) == ["bright/001.png", "bright/dup.png"]
    assert info["duplicates"]["conflicting_labels"] == 0  # same class: a duplicate, not a label conflict
    assert info["channels"] == 3 and info["size"] == [16, 16]
    assert info["modes"]["RGBA"] == 1 and info["modes"]["P"] == 1
    # the JPEG stored 8 wide x 16 high with EXIF "rotate 90": upright it is 16 wide x 8 high
    assert info["original_sizes"].get("16x8") == 1 and "8x16" not in info["original_sizes"]
    assert sum(info["original_sizes"].values()) <= prof["rows"]
    X = np.load(collected / "images.npy", mmap_mode="r")
    assert X.shape == (124, 3, 16, 16) and X.dtype == np.uint8


def test_rgba_composited_and_rows(collected: Path) -> None:
    rows = load_arrays(collected / "rows.npz", "y", "names", "keys")
    X = np.load(collected / "images.npy", mmap_mode="r")
    i = list(rows["names"]).index("bright/rgba.png")
    assert rows["y"][i] == "bright"
    assert X[i].mean() > 150  # half-transparent bright pixels on white stay bright
    assert rows["keys"].shape == (124, 16)


def test_bad_images_error_names_the_file(photo_dir: Path, tmp_path: Path) -> None:
    from pipelines import collect

    with pytest.raises(DataError, match=r"dark/corrupt\.jpg: .*data\.bad_images: error"):
        collect.run(image_params(f"folder:{photo_dir}", bad_images="error"), tmp_path / "c")
    assert not (tmp_path / "c").exists()  # no partial output


def test_gray_folder_auto_is_one_channel(tmp_path: Path) -> None:
    from PIL import Image

    from pipelines import collect

    rng = np.random.default_rng(3)
    for name in ("a", "b"):
        (tmp_path / "g" / name).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(pattern(0 if name == "a" else 1, rng)[..., 0]).save(tmp_path / "g" / name / f"{i}.png")
    prof = collect.run(image_params(f"folder:{tmp_path / 'g'}"), tmp_path / "c")
    assert prof["rows"] == 10
    assert read_json(tmp_path / "c" / "profile.json")["image"]["channels"] == 1
    forced = make_params(data={"source": f"folder:{tmp_path / 'g'}"}, image={"size": [8, 8], "channels": 3})
    collect.run(forced, tmp_path / "c3")
    assert np.load(tmp_path / "c3" / "images.npy").shape == (10, 3, 8, 8)


def test_a_folder_already_split_into_train_and_test_is_pooled(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """pets/train/<class>, pets/test/<class> (and loose, unlabelled test files): the classes are the
    inner folders, not "train" and "test"; the split section splits the pooled images again."""
    from PIL import Image

    from pipelines import collect

    root = tmp_path / "pets"
    make_folder(root / "train", per_class=6, awkward=False)
    make_folder(root / "Test", per_class=3, seed=1, awkward=False)
    Image.fromarray(pattern(0, np.random.default_rng(0))).save(root / "Test" / "unlabelled.png")
    with caplog.at_level("WARNING"):
        collect.run(image_params(f"folder:{root}"), tmp_path / "c")
    prof = read_json(tmp_path / "c" / "profile.json")
    assert prof["classes"] == sorted(CLASSES) and prof["rows"] == 27
    assert prof["class_balance"] == {name: 9 for name in CLASSES}
    names = list(load_arrays(tmp_path / "c" / "rows.npz", "names")["names"])
    assert "train/dark/000.jpg" in names and "Test/stripes/002.jpg" in names
    assert "split folders" in caplog.text and "'Test': 1" in caplog.text


def test_idx_source(tmp_path: Path) -> None:
    from pipelines import collect

    root = make_idx(tmp_path / "mnist")
    collect.run(make_params(data={"source": f"idx:{root}"}, image={"size": [10, 10], "channels": "auto"}),
                tmp_path / "c")
    prof = read_json(tmp_path / "c" / "profile.json")
    assert prof["rows"] == 195 and prof["classes"] == ["0", "1", "2"]
    assert prof["image"]["channels"] == 1 and not prof["image"]["photos"]
    X = np.load(tmp_path / "c" / "images.npy")
    assert X.shape == (195, 1, 10, 10) and X[0, 0, :, :3].mean() > 150  # class 0: bar on the left, not resized


def test_idx_errors(tmp_path: Path) -> None:
    from pipelines import collect

    root = make_idx(tmp_path / "m", gz=False)
    (root / "t10k-labels-idx1-ubyte").write_bytes((root / "t10k-labels-idx1-ubyte").read_bytes()[:-3])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: IDX header says 45 .*truncated"):
        collect.run(make_params(data={"source": f"idx:{root}"}), tmp_path / "c")
    (root / "train-images-idx3-ubyte").unlink()
    with pytest.raises(DataError, match=r"no train-images IDX file"):
        collect.run(make_params(data={"source": f"idx:{root}"}), tmp_path / "c")
    with pytest.raises(DataError, match=r"nowhere: folder not found"):
        collect.run(make_params(data={"source": "idx:nowhere"}), tmp_path / "c")


def test_csv_of_paths(tmp_path: Path) -> None:
    from pipelines import collect

    csv = make_csv(tmp_path / "d")
    collect.run(image_params(f"csv:{csv}", image="path", target="label"), tmp_path / "c")
    prof = read_json(tmp_path / "c" / "profile.json")
    assert prof["kind"] == "image" and prof["rows"] == 120
    bad = prof["image"]["bad_files"]["files"]
    assert [b["reason"] for b in bad] == ["file not found", "empty label 'label'"]
    assert "line 122" in bad[0]["path"]
    with pytest.raises(DataError, match=r"labels\.csv: no column 'file' \(from data\.image"):
        collect.run(image_params(f"csv:{csv}", image="file", target="label"), tmp_path / "c2")


def test_params_errors() -> None:
    with pytest.raises(ParamsError, match=r"image\.size"):
        make_params(image={"size": [64]})
    with pytest.raises(ParamsError, match=r"image\.channels"):
        make_params(image={"channels": 4})
    with pytest.raises(ParamsError, match=r"data\.image: set together with data\.text"):
        make_params(data={"source": "csv:x.csv", "image": "p", "text": "t", "target": "y"})
    with pytest.raises(ParamsError, match=r"data\.bad_images"):
        make_params(data={"bad_images": "ignore"})
    with pytest.raises(ParamsError, match=r"data\.target: folder:<dir> sources have no columns"):
        from pipelines.sources import load_source

        load_source(make_params(data={"source": "folder:x", "target": "y"}).data)
    assert make_params(train={"augment": "auto"}).train.augment == "auto"
    assert make_params(train={"augment": True}).train.augment is True


def test_decompression_bomb_refused(tmp_path: Path) -> None:
    from PIL import Image

    from pipelines.modalities.image import decode

    buf = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buf, "PNG")  # 64 M pixels, a few KB of PNG
    with pytest.raises(decode.ImageDecodeError, match=r"bomb\.png: refused"):
        decode.decode(buf.getvalue(), "bomb.png", (8, 8), 1)


# ---------------------------------------------------------------- split and streaming


def test_split_streams_uint8(collected: Path, tmp_path: Path) -> None:
    import torch

    from pipelines import split
    from pipelines.data import load_split, preprocess_state
    from pipelines.plugins import get_modality

    params = image_params("folder:x")
    split.run(params, collected, tmp_path / "s")
    info = read_json(tmp_path / "s" / "split.json")
    state = preprocess_state(tmp_path / "s")
    assert info["input_shape"] == [3, 16, 16] and info["value_range"] == [0.0, 255.0]
    assert info["leakage"]["cross_split_duplicates"] == sum(info["leakage"]["cross_split_duplicates_by_split"].values())
    assert state["kind"] == "image_cache" and len(state["mean"]) == 3 and state["photos"]
    sizes = info["sizes"]
    X_raw, y = load_split(tmp_path / "s", "train", preprocess=False)
    assert X_raw.dtype == np.uint8 and len(X_raw) == sizes["train"] == len(y)
    on_disk = np.load(tmp_path / "s" / "train_images.npy", mmap_mode="r")  # a plain .npy too
    assert np.array_equal(X_raw[2:9], on_disk[2:9]) and np.array_equal(X_raw[[7, 1]], on_disk[[7, 1]])
    assert np.array_equal(X_raw[-1], on_disk[-1])
    collected_rows = np.load(collected / "images.npy", mmap_mode="r")
    index = np.load(tmp_path / "s" / "train.npz")["index"]
    assert np.array_equal(on_disk[:5], collected_rows[index[:5]])  # each split's rows in index order
    assert "X" not in np.load(tmp_path / "s" / "train.npz").files  # no float copy of the images
    # train statistics only: standardised train pixels have mean 0, std 1 per channel
    X, _ = load_split(tmp_path / "s", "train")
    full = np.asarray(X)
    assert full.dtype == np.float32 and np.allclose(full.mean(axis=(0, 2, 3)), 0, atol=1e-4)
    assert np.allclose(full.std(axis=(0, 2, 3)), 1, atol=1e-3)
    assert np.allclose(X[3:5], full[3:5])
    modality = get_modality("image")
    ds = modality.dataset(tmp_path / "s", "train", state, torch.from_numpy(y))
    items = ds.__getitems__([5, 1, 3])
    assert torch.allclose(items[0][0], torch.from_numpy(full[5])) and int(items[1][1]) == int(y[1])
    assert modality.augments_by_default(state)
    feats = modality.baseline_inputs(tmp_path / "s", state)
    assert feats["train"].shape == (sizes["train"], 3 * 8 * 8)  # 16x16 color pooled to 8x8


def test_digits_keep_their_contract(digits_split: Path) -> None:
    from pipelines.data import preprocess_state
    from pipelines.plugins import get_modality

    state = preprocess_state(digits_split)
    assert state["kind"] == "standardize_global"
    assert not get_modality("image").augments_by_default(state)


def test_error_grid_for_digits(digits_split: Path, tmp_path: Path) -> None:
    from pipelines.plugins import get_modality

    worst = [{"row": 1, "actual": "3", "predicted": "8", "score": 0.77}]
    assert get_modality("image").error_plots(digits_split, worst, tmp_path) == ["confidently_wrong.png"]
    assert (tmp_path / "confidently_wrong.png").stat().st_size > 0
