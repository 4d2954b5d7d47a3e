"""Recording served requests for drift analysis: on only when ``DLOPS_RECORD_DIR`` is set.

What is written (the drift command reads exactly this)::

    $DLOPS_RECORD_DIR/<model_name>-v<version>/requests-YYYYMMDD-HHMMSS-<pid>.jsonl

one JSON object per line, ``{"ts": <unix seconds>, "route": "/predict", "items": [...], "outputs": [...]}``:
``items`` as the JSON API takes them (the body's item list; file uploads as ``{"name", "data": base64}``),
``outputs`` the response's ``predictions``. Only answered (200) requests are offered. The name's time
is the file's creation time in UTC (bumped a second when a file would reuse the previous name).

The request path never touches the disk: ``Recorder.offer`` appends to a bounded in-memory queue
(when it is full the request is dropped and counted) and one writer thread per process serialises
and writes what ``FLUSH_S`` gathered in one go. Every batch is one ``os.write`` of whole lines to an
``O_APPEND`` file created ``0o600``, so a killed process leaves valid JSONL (losing at most the last
``FLUSH_S`` of requests). A file rotates at ``DLOPS_RECORD_ROTATE_MB`` (at most a quarter of the cap)
or ``DLOPS_RECORD_ROTATE_S``; at each rotation the oldest files of the model's folder go until the
folder fits ``DLOPS_RECORD_MAX_MB`` (with several workers it can pass the cap by one open file per
extra worker).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

logger = logging.getLogger("bentoml.dlops")  # under bentoml: its logging config shows it

MB = 1024 * 1024
FILE_GLOB = "requests-*.jsonl"
NAME_TIME = "%Y%m%d-%H%M%S"
FLUSH_S = 0.1  # the writer gathers this long after a request (less when the queue is half full): one write per batch
UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class RecordConfig:
    """Where and how much to record (``from_env``)."""

    directory: Path
    sample: float = 1.0  # share of answered requests recorded
    max_bytes: int = 1024 * MB  # the model folder's total, oldest files deleted beyond it
    rotate_bytes: int = 64 * MB  # per file (at most max_bytes / 4)
    rotate_s: float = 3600.0  # per file
    queue_items: int = 1000  # requests waiting for the writer, at most ...
    queue_bytes: int = 64 * MB  # ... and their bodies' bytes at most (above the largest body limit, 32 MiB)


def _number(env: Mapping[str, str], name: str, default: float, lo: float, hi: float = float("inf"),
            low_open: bool = False) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a number") from None
    if not (lo < value if low_open else lo <= value) or not value <= hi:
        bounds = f"{'(' if low_open else '['}{lo:g}, {hi:g}]"
        raise ValueError(f"{name}={raw!r}: expected a number in {bounds}")
    return value


def from_env(env: Mapping[str, str]) -> RecordConfig | None:
    """The recording settings, or None when ``DLOPS_RECORD_DIR`` is unset (recording off).
    ``ValueError`` naming the variable when one is malformed."""
    directory = env.get("DLOPS_RECORD_DIR", "").strip()
    if not directory:
        return None
    return RecordConfig(
        directory=Path(directory).expanduser(),
        sample=_number(env, "DLOPS_RECORD_SAMPLE", 1.0, 0.0, 1.0),
        max_bytes=int(_number(env, "DLOPS_RECORD_MAX_MB", 1024, 0.0, low_open=True) * MB),
        rotate_bytes=int(_number(env, "DLOPS_RECORD_ROTATE_MB", 64, 0.0, low_open=True) * MB),
        rotate_s=_number(env, "DLOPS_RECORD_ROTATE_S", 3600, 0.0, low_open=True))


def _safe(part: Any) -> str:
    return UNSAFE.sub("_", str(part)).strip("._") or "_"


def _line(entry: tuple[float, str, Any, Any]) -> bytes:
    ts, route, items, outputs = entry
    if callable(items):  # deferred work (base64 of uploads): done here, off the request path
        items = items()
    record = {"ts": ts, "route": route, "items": items, "outputs": outputs}
    try:
        return orjson.dumps(record) + b"\n"
    except TypeError:  # integers beyond 64 bits: the stdlib writes them as they came
        return json.dumps(record, ensure_ascii=False, default=str).encode("utf-8", "replace") + b"\n"


class Recorder:
    """Samples answered requests into a bounded queue; a writer thread appends them to JSONL files.

    ``on_written(n)`` and ``on_dropped(reason, n)`` (reasons ``queue_full``, ``too_large``,
    ``write_error``) feed the service's counters; they run on the writer thread except ``queue_full``.
    """

    def __init__(self, config: RecordConfig, model_name: str, version: Any,
                 on_written: Callable[[int], None] | None = None,
                 on_dropped: Callable[[str, int], None] | None = None) -> None:
        self.config = config
        self.folder = config.directory / f"{_safe(model_name)}-v{_safe(version)}"
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # fail fast (at import) when it cannot
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise PermissionError(f"{self.folder}: not writable")
        self.file_bytes = max(1, min(config.rotate_bytes, config.max_bytes // 4))
        self.on_written, self.on_dropped = on_written, on_dropped
        self._wake = threading.Condition(threading.Lock())
        self._pending: list[tuple[float, str, Any, Any]] = []
        self._pending_bytes = 0
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._fd: int | None = None
        self._path: Path | None = None
        self._size, self._opened_at, self._name_second = 0, 0.0, 0
        self._last_error_log = 0.0

    # ------------------------------------------------------------ the request path

    def sampled(self) -> bool:
        """Whether this request is to be recorded (``DLOPS_RECORD_SAMPLE``)."""
        sample = self.config.sample
        return sample >= 1.0 or (sample > 0.0 and random.random() < sample)

    def offer(self, route: str, items: Any, outputs: list[Any], size: int) -> bool:
        """Queue one answered request; ``items`` may be a zero-argument callable returning them (run on
        the writer thread). ``size``: its body's bytes, for the queue's byte bound. False: dropped."""
        entry = (time.time(), route, items, outputs)
        with self._wake:
            if self._thread is None:  # started lazily: the `bentoml serve` parent imports the service too
                self._start()
            full = len(self._pending) >= self.config.queue_items or \
                self._pending_bytes + size > self.config.queue_bytes
            if not full:
                self._pending.append(entry)
                self._pending_bytes += size
                if len(self._pending) == 1 or 2 * len(self._pending) >= self.config.queue_items:
                    self._wake.notify()  # the first since the last write, or half full: not every request
        if full and self.on_dropped is not None:
            self.on_dropped("queue_full", 1)
        return not full

    # ------------------------------------------------------------ the writer thread

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dlops-record", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued and stop the writer (at exit)."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._stopping:
                    self._wake.wait()  # idle until a request comes
                if not self._stopping:
                    self._wake.wait(FLUSH_S)  # gather (a half-full queue or close() ends it early)
                batch, self._pending, self._pending_bytes = self._pending, [], 0
                stopping = self._stopping
            if batch:
                try:
                    self._write(batch)
                except Exception:  # noqa: BLE001 - the writer must outlive any one bad batch
                    logger.exception("recording: a batch of %d request(s) was lost", len(batch))
                    self._dropped("write_error", len(batch))
            elif stopping:
                self._close_file()
                return

    def _write(self, batch: list[tuple[float, str, Any, Any]]) -> None:
        """Serialise ``batch`` and append it, rotating as the size and age limits say."""
        chunk: list[bytes] = []
        chunk_bytes, too_large = 0, 0
        if self._fd is not None and os.fstat(self._fd).st_nlink == 0:  # deleted by another worker's cap
            self._close_file()
        for entry in batch:
            line = _line(entry)
            if len(line) > self.file_bytes:
                too_large += 1
                continue
            if self._fd is None or self._size + chunk_bytes + len(line) > self.file_bytes or \
                    time.time() - self._opened_at >= self.config.rotate_s:
                self._flush(chunk)
                chunk, chunk_bytes = [], 0
                self._rotate()
            chunk.append(line)
            chunk_bytes += len(line)
        self._flush(chunk)
        if too_large:
            self._dropped("too_large", too_large)

    def _flush(self, lines: list[bytes]) -> None:
        if not lines:
            return
        if self._fd is None:  # the file could not be created (logged)
            self._dropped("write_error", len(lines))
            return
        data = b"".join(lines)
        try:
            view = memoryview(data)
            while view:  # a regular file takes it whole; a short write (disk full) is continued
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            self._dropped("write_error", len(lines))
            self._log_error(f"cannot write {self._path}: {exc}")
            self._close_file()
            return
        self._size += len(data)
        if self.on_written is not None:
            self.on_written(len(lines))

    def _rotate(self) -> None:
        """Close the current file, make room under the cap, open the next one."""
        self._close_file()
        self._enforce_cap(self.config.max_bytes - self.file_bytes)
        now = time.time()
        second = max(int(now), self._name_second + 1)
        for _ in range(100):  # a name left by an earlier process with the same pid: the next second
            path = self.folder / f"requests-{time.strftime(NAME_TIME, time.gmtime(second))}-{os.getpid()}.jsonl"
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
                break
            except FileExistsError:
                second += 1
            except OSError as exc:
                self._log_error(f"cannot create {path}: {exc}")
                return
        else:
            return
        os.fchmod(self._fd, 0o600)  # whatever the umask (it can only take bits away; this says it)
        self._path, self._size, self._opened_at, self._name_second = path, 0, now, second

    def _enforce_cap(self, budget: int) -> None:
        """Delete the oldest files until the folder holds at most ``budget`` bytes."""
        files = []
        for path in self.folder.glob(FILE_GLOB):
            try:
                files.append((path.name, path.stat().st_size, path))
            except FileNotFoundError:
                continue
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):  # the names sort by their time
            if total <= budget:
                break
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            total -= size

    def _close_file(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _dropped(self, reason: str, n: int) -> None:
        if self.on_dropped is not None:
            self.on_dropped(reason, n)

    def _log_error(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= 60.0:  # a full disk must not flood the log
            logger.warning("recording: %s (requests are dropped and counted meanwhile)", message)
            self._last_error_log = now
