"""Photo augmentation: random padded crop + horizontal flip, vectorised, seeded; the wrong-images grid."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines.modalities.image.augment import PhotoAugment, default_pad, photo_augmenter
from pipelines.modalities.image.report import wrong_grid_png


def _reference(x: torch.Tensor, pad: int, mode: str, dy: torch.Tensor, dx: torch.Tensor,
               flip: torch.Tensor) -> torch.Tensor:
    """The same crop + flip, one image at a time through F.pad."""
    padded = F.pad(x, (pad,) * 4, mode=mode)
    h, w = x.shape[-2:]
    out = [padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(len(x))]
    return torch.stack([o.flip(-1) if f else o for o, f in zip(out, flip)])


@pytest.mark.parametrize("mode", ["reflect", "replicate"])
def test_matches_pad_crop_flip_image_by_image(mode):
    x = torch.randn(9, 3, 10, 13)
    torch.manual_seed(3)
    got = PhotoAugment(pad=3, padding_mode=mode)(x)
    torch.manual_seed(3)  # the augmenter's draws, in its order
    dy, dx, flip = torch.randint(0, 7, (9,)), torch.randint(0, 7, (9,)), torch.rand(9) < 0.5
    torch.testing.assert_close(got, _reference(x, 3, mode, dy, dx, flip), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_and_dtype_kept(dtype):
    x = torch.randn(6, 1, 28, 28, dtype=dtype)
    y = photo_augmenter({"mean": 0.0, "std": 1.0})(x)
    assert y.shape == x.shape and y.dtype == dtype and y.is_contiguous()


def test_deterministic_under_manual_seed():
    aug, x = photo_augmenter(None), torch.randn(32, 3, 16, 16)
    torch.manual_seed(7)
    a = aug(x)
    torch.manual_seed(7)
    assert torch.equal(a, aug(x))
    assert not torch.equal(a, aug(x))


def test_flips_about_half_the_images():
    x = torch.randn(2000, 1, 6, 6)
    torch.manual_seed(0)
    y = PhotoAugment(pad=0)(x)
    flipped = (y == x.flip(-1)).flatten(1).all(1)
    kept = (y == x).flatten(1).all(1)
    assert (flipped | kept).all()
    assert 0.45 < flipped.float().mean().item() < 0.55


def test_crops_shift_content_per_image():
    # a single bright pixel in the middle: its new place is the image's own offset
    x = torch.zeros(500, 1, 32, 32)
    x[:, :, 16, 16] = 1.0
    torch.manual_seed(0)
    y = PhotoAugment(flip_p=0.0)(x)
    where = y.flatten(1).argmax(1)
    rows, cols = where // 32, where % 32
    assert default_pad(32, 32) == 4
    assert (rows - 16).abs().max() == 4 and (cols - 16).abs().max() == 4
    assert len({(int(r), int(c)) for r, c in zip(rows, cols)}) == 81  # every offset in [-4, 4]^2 drawn
    assert (y.flatten(1).sum(1) == 1).all()  # the pixel never falls off: pad == max shift


def test_identity_when_disabled():
    x = torch.randn(8, 3, 12, 12)
    assert PhotoAugment(pad=0, flip_p=0.0)(x) is x


def test_reflect_pad_is_capped_for_tiny_images():
    x = torch.randn(4, 1, 3, 3)
    torch.manual_seed(0)
    assert PhotoAugment(pad=8)(x).shape == x.shape


@pytest.mark.parametrize("kwargs", [{"pad": -1}, {"flip_p": 1.5}, {"padding_mode": "zeros"}])
def test_bad_settings_refused(kwargs):
    with pytest.raises(ValueError):
        PhotoAugment(**kwargs)


def test_speed_256_rgb_64px():
    aug, x = photo_augmenter(None), torch.randn(256, 3, 64, 64)
    aug(x)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        aug(x)
        times.append(time.perf_counter() - start)
    print(f"photo augment 256x3x64x64: best {min(times) * 1e3:.1f} ms, median {sorted(times)[2] * 1e3:.1f} ms")
    assert min(times) < 0.5  # 50 ms is the target; a loose bound keeps a busy shared box from flaking


# ---------------------------------------------------------------- the wrong-images grid


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


@pytest.mark.parametrize("channels", [1, 3])
def test_wrong_grid_shows_the_most_confident_mistakes(channels, tmp_path: Path):
    rng = np.random.default_rng(0)
    n, classes = 60, ["cat", "dog", "a rather long class name"]
    images = rng.integers(0, 256, (n, channels, 20, 24), dtype=np.uint8)
    y = rng.integers(0, 3, n)
    proba = rng.dirichlet(np.ones(3), n)
    info = wrong_grid_png(images, y, proba, classes, tmp_path / "wrong.png", k=16)
    pred = proba.argmax(1)
    wrong = np.flatnonzero(pred != y)
    assert info["wrong"] == len(wrong) and info["total"] == n
    conf = proba[info["shown"], pred[info["shown"]]]
    assert len(info["shown"]) == min(16, len(wrong)) and set(info["shown"]) <= set(wrong.tolist())
    assert (np.diff(conf) <= 0).all()  # most confident first
    assert conf[-1] >= np.sort(proba[wrong, pred[wrong]])[::-1][len(conf) - 1]
    for row, i in zip(info["rows"], info["shown"]):  # long names are shortened for the titles
        assert classes[y[i]].startswith(row["true"].rstrip("…")) and row["pred"].rstrip("…") in classes[pred[i]]
    width, height = _png_size(tmp_path / "wrong.png")
    assert 300 <= width <= 2000 and 300 <= height <= 2000


def test_wrong_grid_with_fewer_mistakes_than_k(tmp_path: Path):
    images = np.zeros((5, 1, 8, 8), np.uint8)
    y = np.array([0, 1, 0, 1, 0])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.8, 0.2]])
    info = wrong_grid_png(images, y, proba, ["0", "1"], tmp_path / "w.png", k=16)
    assert info["wrong"] == 2 and info["shown"] == [2, 3]
    assert info["rows"][0] == {"index": 2, "true": "0", "pred": "1", "p": 0.7}
    _png_size(tmp_path / "w.png")


def test_wrong_grid_when_nothing_is_wrong(tmp_path: Path):
    images = np.zeros((4, 3, 8, 8), np.uint8)
    y = np.array([0, 1, 1, 0])
    proba = np.eye(2)[y]
    info = wrong_grid_png(images, y, proba, ["a", "b"], tmp_path / "none.png")
    assert info["wrong"] == 0 and info["shown"] == []
    width, height = _png_size(tmp_path / "none.png")
    assert width <= 600 and height <= 300


def test_wrong_grid_refuses_mismatched_inputs(tmp_path: Path):
    images = np.zeros((4, 1, 8, 8), np.uint8)
    with pytest.raises(ValueError, match="one column per class"):
        wrong_grid_png(images, np.zeros(4, int), np.full((4, 3), 1 / 3), ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="row counts differ"):
        wrong_grid_png(images, np.zeros(3, int), np.full((3, 2), 0.5), ["a", "b"], tmp_path / "x.png")
