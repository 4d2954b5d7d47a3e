"""Decoded images on disk: collect decodes every image once (``decode.py``, the code path the
service and batch prediction share) into one uint8 ``[N, C, H, W]`` ``.npy`` that later steps read
in row blocks (it also opens with ``np.load(mmap_mode="r")``), so memory stays flat however many
images there are.

- ``write_cache``: files (``ImageFiles``) or pixels (``ImageArrays``) -> ``images.npy`` + per-row
  facts (labels, names, content keys) and the profile's image facts (original sizes, channels,
  modes, duplicates, bad files). ``image.channels: auto`` decodes to RGB and keeps one channel at the
  end when every image was grayscale (a gray image as RGB has three equal channels).
- ``NpyRows``/``NpyWriter``: a ``.npy`` read by rows (``pread``) / written block by block, so no
  step keeps mapped pages of the whole file resident; ``write_splits`` (one pass: every split's file
  and the train rows' per-channel mean/std) and ``pooled`` (the baselines' downsampled pixels).
- ``StandardizedImages`` / ``StreamedImages``: standardised float32 rows computed when read.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.files import DataError
from pipelines.modalities.image.decode import ImageDecodeError, decode_with_info, to_array

log = logging.getLogger(__name__)

CHUNK = 1024  # rows per read of a memmap: 12 MB at 64x64 RGB
MAX_LISTED = 200  # bad files / duplicate groups named in the profile (all are counted)


@dataclass
class Cache:
    """What ``write_cache`` wrote and saw."""

    rows: int
    channels: int
    labels: list[Any] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)  # blake2b of the decoded pixels (split's leakage check)
    file_hashes: list[str] = field(default_factory=list)  # sha256 of the file bytes (the profile's duplicates)
    sizes: Counter = field(default_factory=Counter)  # "WxH" as found (after EXIF rotation)
    modes: Counter = field(default_factory=Counter)  # Pillow modes as found
    gray: int = 0
    bad: list[dict[str, str]] = field(default_factory=list)

    def facts(self) -> dict[str, Any]:
        """The profile's image facts: size/channel histograms, duplicates, bad files."""
        groups: dict[str, list[str]] = {}
        labels: dict[str, set[str]] = {}
        for digest, name, label in zip(self.file_hashes or [k.hex() for k in self.keys], self.names, self.labels):
            groups.setdefault(digest, []).append(name)
            labels.setdefault(digest, set()).add(str(label))
        dups = [g for g in groups.values() if len(g) > 1]
        conflicting = [groups[d] for d in groups if len(labels[d]) > 1]  # the same image under two labels
        return {
            "original_sizes": dict(self.sizes.most_common(20)),
            "distinct_sizes": len(self.sizes),
            "channels_found": {"gray": self.gray, "color": self.rows - self.gray},
            "modes": dict(self.modes.most_common()),
            "duplicates": {"by": "file sha256" if self.file_hashes else "pixels",
                           "rows": sum(len(g) - 1 for g in dups), "groups": len(dups),
                           "examples": dups[:MAX_LISTED], "conflicting_labels": len(conflicting),
                           "conflicting_examples": conflicting[:MAX_LISTED]},
            "bad_files": {"count": len(self.bad), "files": self.bad[:MAX_LISTED]},
        }


def _bad(cache: Cache, name: str, message: str, policy: str) -> None:
    if policy == "error":
        raise DataError(f"{message} (data.bad_images: error; set it to skip to leave such files out)")
    reason = message[len(name) + 2:] if message.startswith(f"{name}: ") else message
    cache.bad.append({"path": name, "reason": reason})


def write_cache(source: Any, size: tuple[int, int], channels: int | str, policy: str, out: Path,
                name: str = "images.npy") -> Cache:
    """Decode ``source`` (``ImageFiles`` or ``ImageArrays``) into ``out/name``; ``policy`` for bad files."""
    decode_c = 3 if channels == "auto" else int(channels)
    raw = out / f"{name}.partial"
    cache = Cache(rows=0, channels=decode_c)
    for entry_name, reason in getattr(source, "bad", ()):
        _bad(cache, entry_name, f"{entry_name}: {reason}", policy)
    with open(raw, "wb") as fh:
        for label, item_name, arr, facts in _decoded(source, size, decode_c, cache, policy):
            fh.write(arr.tobytes())
            cache.labels.append(label)
            cache.names.append(item_name)
            cache.keys.append(hashlib.blake2b(arr.tobytes(), digest_size=16).digest())
            cache.sizes[facts[0]] += 1
            cache.modes[facts[1]] += 1
            cache.gray += facts[2] == 1
            cache.rows += 1
    if cache.rows == 0:
        raw.unlink()
        raise DataError(f"{source.origin}: no usable images ({len(cache.bad)} bad: "
                        f"{'; '.join(b['path'] + ': ' + b['reason'] for b in cache.bad[:3])})")
    keep = 1 if channels == "auto" and cache.gray == cache.rows else decode_c
    h, w = size
    row = decode_c * h * w
    with open(raw, "rb") as src, NpyWriter(out / name, (cache.rows, keep, h, w)) as dst:
        for _ in range(0, cache.rows, CHUNK):  # plain reads: no mapped pages kept resident
            chunk = np.frombuffer(src.read(CHUNK * row), np.uint8).reshape(-1, decode_c, h, w)
            dst.write(chunk[:, :keep])
    raw.unlink()
    cache.channels = keep
    return cache


class NpyWriter:
    """A C-order ``.npy`` written row block by row block (header first, then the data appended)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: Any = np.uint8) -> None:
        self.path, self.shape, self.dtype, self.rows = Path(path), tuple(shape), np.dtype(dtype), 0

    def __enter__(self) -> NpyWriter:
        self.fh = open(self.path, "wb")
        np.lib.format.write_array_header_1_0(
            self.fh, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape})
        return self

    def write(self, block: np.ndarray) -> None:
        self.fh.write(np.ascontiguousarray(block, self.dtype).tobytes())
        self.rows += len(block)

    def __exit__(self, *exc: Any) -> None:
        self.fh.close()
        if exc[0] is None and self.rows != self.shape[0]:
            raise RuntimeError(f"{self.path}: wrote {self.rows} rows, header says {self.shape[0]}")


class NpyRows:
    """Rows of a ``.npy`` file read on demand with ``pread`` (``len``, ``shape``, ``dtype``, ``X[i]``,
    ``X[a:b]``, ``X[index_array]``): unlike a memmap, rows read are not kept resident by the mapping,
    so memory stays flat over an epoch however large the file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as fh:
                major, _ = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read(fh)
                self.offset = fh.tell()
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.path}: not a readable .npy file ({exc})") from None
        if fortran:
            raise DataError(f"{self.path}: Fortran-ordered array, expected C order")
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._fd: int | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict[str, Any]:  # a DataLoader worker opens its own descriptor
        return {**self.__dict__, "_fd": None}

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def _read(self, start: int, count: int) -> np.ndarray:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        buf = bytearray(count * self.row_bytes)
        got = os.preadv(self._fd, [buf], self.offset + start * self.row_bytes) if count else 0
        if got != len(buf):
            raise DataError(f"{self.path}: truncated (rows {start}..{start + count - 1} not all there)")
        return np.frombuffer(buf, self.dtype).reshape(count, *self.shape[1:])

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:
                return self._read(start, max(stop - start, 0))
            key = np.arange(start, stop, step)
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"row {key} out of range for {len(self)} rows")
            return self._read(i, 1)[0]
        index = np.asarray(key)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        out = np.empty((len(index), *self.shape[1:]), self.dtype)
        for j, i in enumerate(index.tolist()):
            out[j] = self[i]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def write_splits(src: Path, parts: dict[str, np.ndarray], files: dict[str, Path]) -> tuple[list[float], list[float]]:
    """One sequential pass over the collected ``src`` ``.npy``: each split's rows into ``files[name]``
    (in index order) and the per-channel mean/std of the train rows."""
    X = NpyRows(src)
    which = np.full(len(X), -1, np.int8)
    names = list(parts)
    for k, name in enumerate(names):
        which[parts[name]] = k
    c = X.shape[1]
    total, sq, count = np.zeros(c), np.zeros(c), 0
    writers = {name: NpyWriter(files[name], (len(parts[name]), *X.shape[1:])) for name in names}
    for w in writers.values():
        w.__enter__()
    try:
        for i in range(0, len(X), CHUNK):
            chunk, owner = X[i:i + CHUNK], which[i:i + CHUNK]
            for k, name in enumerate(names):
                writers[name].write(chunk[owner == k])
            train = chunk[owner == names.index("train")].astype(np.float64)
            total += train.sum(axis=(0, 2, 3))
            sq += np.square(train).sum(axis=(0, 2, 3))
            count += train.shape[0] * train.shape[2] * train.shape[3]
    finally:
        for w in writers.values():
            w.__exit__(None, None, None)
    mean = total / count
    std = np.sqrt(np.maximum(sq / count - mean ** 2, 0.0))
    return mean.tolist(), [float(v) if v > 1e-6 else 1.0 for v in std]


def _decoded(source: Any, size: tuple[int, int], channels: int, cache: Cache, policy: str):
    """``(label, name, uint8 [C, H, W], (size text, mode, channels found))`` per usable image."""
    from PIL import Image

    if hasattr(source, "paths"):  # ImageFiles: bytes -> decode.py, as the service does
        for path, label, name in zip(source.paths, source.labels, source.names):
            try:
                data = Path(path).read_bytes()
                arr, info = decode_with_info(data, name, size, channels)  # the service's own decode
            except OSError as exc:
                _bad(cache, name, f"{name}: cannot read ({exc.strerror})", policy)
                continue
            except ImageDecodeError as exc:
                _bad(cache, name, str(exc), policy)
                continue
            cache.file_hashes.append(hashlib.sha256(data).hexdigest())
            yield label, name, arr, (info["size"], info["mode"], info["channels"])
        return
    h0, w0 = source.X.shape[1:]  # ImageArrays: gray pixels, resized like any gray image
    for x, label, name in zip(source.X, source.y, source.names):
        if (h0, w0) == tuple(size) and channels == 1:
            arr = x[None]
        else:
            arr = to_array(Image.fromarray(np.ascontiguousarray(x), mode="L"), size, channels)
        yield int(label), name, arr, (f"{w0}x{h0}", "L", 1)


def pooled(X: np.ndarray, side: int) -> np.ndarray:
    """Flat float32 features for the baselines: each channel average-pooled to about ``side`` x
    ``side`` (block means: 64x64 -> 16x16 with 4x4 blocks at ``side=16``; 28x28 -> 14x14), 0..1."""
    n, c, h, w = X.shape
    fh, fw = max(1, round(h / side)), max(1, round(w / side))
    hh, ww = h // fh, w // fw
    out = np.empty((n, c * hh * ww), np.float32)
    for i in range(0, n, CHUNK):
        chunk = np.asarray(X[i:i + CHUNK], np.float32)[:, :, :hh * fh, :ww * fw]
        blocks = chunk.reshape(len(chunk), c, hh, fh, ww, fw).mean(axis=(3, 5))
        out[i:i + CHUNK] = blocks.reshape(len(chunk), -1) / 255.0
    return out


class StandardizedImages:
    """uint8 images (``NpyRows``, a memmap or an array) read as standardised float32
    ``(x - mean[c]) / std[c]`` rows when sliced: ``len``, ``shape``, ``dtype`` and ``X[a:b]`` like an
    array, without a float copy of all."""

    def __init__(self, X: np.ndarray, mean: list[float], std: list[float]) -> None:
        self.X = X
        self.mean = np.asarray(mean, np.float32)[:, None, None]
        self.std = np.asarray(std, np.float32)[:, None, None]
        self.shape, self.dtype, self.ndim = tuple(X.shape), np.dtype(np.float32), X.ndim

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, key: Any) -> np.ndarray:
        return (np.asarray(self.X[key], np.float32) - self.mean) / self.std

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


class StreamedImages:
    """A map-style torch dataset over a split's uint8 ``.npy``: each batch's rows are read from the
    file (sorted, so reads go forward) and standardised; ``(image, target)`` items."""

    def __init__(self, path: Path, mean: list[float], std: list[float], targets: Any) -> None:
        self.path, self.mean, self.std, self.targets = Path(path), mean, std, targets
        self._images: StandardizedImages | None = None

    def _open(self) -> StandardizedImages:
        if self._images is None:
            self._images = StandardizedImages(NpyRows(self.path), self.mean, self.std)
        return self._images

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        return self.__getitems__([i])[0]

    def __getitems__(self, index: list[int]) -> list[tuple[Any, Any]]:
        import torch

        index = np.asarray(index, dtype=np.int64)
        order = np.argsort(index, kind="stable")
        batch = np.empty((len(index), *self._open().shape[1:]), np.float32)
        batch[order] = self._open()[index[order]]
        x = torch.from_numpy(batch)
        return list(zip(x, self.targets[torch.from_numpy(index)]))
