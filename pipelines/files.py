"""File helpers shared by the steps: atomic stage outputs, JSON, arrays, hashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
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


# Temp folders carry the pid of the process that made them, so that the next step can tell a folder
# of a killed process (SIGKILL runs no cleanup) from one in use by a live step, and remove it.
_PID_MARK = re.compile(r"(?:^dlops-pid|\.tmp-pid)(\d+)-")


def failpoint(name: str) -> None:
    """Fault injection for the crash tests: with ``DLOPS_FAILPOINT=<name>`` the process group is
    SIGKILLed here, as a ``kill -9`` of the job (``dvc repro`` and its stage) would. Off otherwise."""
    if os.environ.get("DLOPS_FAILPOINT") == name:
        log.warning("DLOPS_FAILPOINT=%s: killing process group %d", name, os.getpgrp())
        os.killpg(os.getpgrp(), signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _debris(folder: Path, pattern: str) -> list[Path]:
    """Entries of ``folder`` matching ``pattern`` made by processes that no longer exist."""
    found = []
    for path in folder.glob(pattern):
        m = _PID_MARK.search(path.name)
        if m is None or not pid_alive(int(m[1])):  # no pid: written by an older dlops, never in use now
            found.append(path)
    return found


def remove_debris(folder: Path, pattern: str) -> int:
    removed = 0
    for path in _debris(folder, pattern):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
        log.info("removed %s, left by a step that was killed", path)
    return removed


@contextlib.contextmanager
def private_tmp(step: str) -> Iterator[Path]:
    """Point ``$TMPDIR`` (ours and every library's temp files, subprocesses included) at a folder of
    this process, ``<tmp>/dlops-pid<pid>-<step>-*``, removed at exit. Folders that killed steps left
    behind are removed first, so a ``kill -9`` leaves debris only until the next step starts."""
    base = Path(tempfile.gettempdir())
    remove_debris(base, "dlops-pid*")
    folder = Path(tempfile.mkdtemp(prefix=f"dlops-pid{os.getpid()}-{step}-", dir=base))
    saved_env, saved_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = str(folder), str(folder)
    try:
        yield folder
    finally:
        tempfile.tempdir = saved_tempdir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def staged_outputs(out_dir: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temp dir beside ``out_dir``; on success move its entries into ``out_dir``
    (``replace``: the temp dir *becomes* ``out_dir``, nothing of the old one is kept).

    A step that raises leaves ``out_dir`` as it was (DVC has already removed the stage's outs,
    so a failed stage leaves nothing), and the temp dir is removed. Temp dirs of killed steps
    (``.<name>.tmp-pid<pid>-*`` of a dead pid) beside it are removed first.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_debris(out_dir.parent, ".*.tmp-*")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-pid{os.getpid()}-", dir=out_dir.parent))
    try:
        yield tmp
        if replace:
            old = out_dir.with_name(f".{out_dir.name}.tmp-pid{os.getpid()}-old")
            if out_dir.exists():
                os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
            return
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
