"""File helpers shared by the steps: atomic stage outputs, JSON, arrays, hashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad input data; the message names the file (and row/column where known)."""


class ParamsError(ValueError):
    """A params.yaml problem; the message names the dotted key at fault (``pipelines.params`` raises it;
    it lives here so that the plug-in registry can raise it without importing the params loader)."""


@contextlib.contextmanager
def staged_outputs(out_dir: str | Path) -> Iterator[Path]:
    """Yield a temp dir beside ``out_dir``; on success move its entries into ``out_dir``.

    A step that raises leaves ``out_dir`` as it was (DVC has already removed the stage's outs,
    so a failed stage leaves nothing), and the temp dir is removed.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
        out_dir.mkdir(exist_ok=True)
        for entry in sorted(tmp.iterdir()):
            target = out_dir / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (tuple, set)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: missing (run the step that writes it first)") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON at line {exc.lineno}: {exc.msg}") from None


def save_arrays(path: str | Path, **arrays: np.ndarray) -> None:
    """Save arrays as an uncompressed .npz (no pickled objects)."""
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def load_arrays(path: str | Path, *names: str) -> dict[str, np.ndarray]:
    """Load named arrays from an .npz written by ``save_arrays``; pickles are refused."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [n for n in names if n not in npz.files]
            if missing:
                raise DataError(f"{path}: missing array(s) {missing}; has {npz.files}")
            return {n: npz[n] for n in (names or npz.files)}
    except FileNotFoundError:
        raise DataError(f"{path}: missing (run the step that writes it first)") from None
    except ValueError as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: not a readable .npz archive: {exc}") from None


def sha256_arrays(*arrays: np.ndarray) -> str:
    """Content hash of arrays (dtype, shape and bytes), stable across runs and machines."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
