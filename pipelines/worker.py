"""A warm helper process: a step starts it first, it imports a heavy library on the other core while
the step does its own work, then runs the step's calls into that library.

Evaluate and deploy spend most of a small run importing libraries they need only at the end
(MLflow and its SQL store ~2.3 s, BentoML's build ~0.8 s; measured on 2 cores, README "Scale").
``Worker("pipelines.tracking:get_client", library="mlflow")`` starts ``python -m pipelines.worker``
at once; the child runs the warm-up functions, then answers calls::

    with Worker("pipelines.tracking:get_client", library="mlflow") as mlflow:
        ...                                        # the step's own work, on this core
        mlflow.call("pipelines.evaluate:log_to_mlflow", run_id, metrics, gate, folder)  # in the child

A step run as ``python -m`` can start the child before its own imports: ``prestart(*warm)`` at the
top of its module (under ``if __name__ == "__main__"``); the step's ``Worker(*warm)`` takes that
child over, and a step that ends before it does (bad params) stops it. Each call carries the step's
temp folder (``pipelines.files.private_tmp``), so a child started earlier writes its temp files there too.

Calls and results are JSON lines on the child's stdin/stdout (its library prints go to stderr,
with the step's log). A call that raises in the child raises ``WorkerError`` here with the child's
one-line reason (the child logs its traceback). The child exits when its stdin closes: when the
step leaves the ``with`` block, and also when the step is killed (even by SIGKILL), after finishing
the call it was running. It ignores Ctrl-C (the step, which gets it too, decides: a step that fails
terminates its workers).
"""

from __future__ import annotations

import atexit
import importlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class WorkerError(RuntimeError):
    """A call failed in the worker; the message is the worker's one-line reason."""


def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _spawn(warm: tuple[str, ...], env: dict[str, str] | None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipelines.worker", *warm], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, bufsize=1, env=env)


_prestarted: dict[tuple[str, ...], subprocess.Popen] = {}


def prestart(*warm: str) -> None:
    """Start the child of ``Worker(*warm)`` (default environment) now, ahead of the step's own imports
    (~0.3 s earlier); the ``Worker`` adopts it. One not adopted by the time the process exits is stopped."""
    if warm not in _prestarted:
        if not _prestarted:
            atexit.register(_stop_prestarted)
        _prestarted[warm] = _spawn(warm, None)


def _stop_prestarted() -> None:
    for warm in list(_prestarted):
        _discard(warm)


def _discard(warm: tuple[str, ...]) -> None:
    proc = _prestarted.pop(warm, None)
    if proc is not None:
        proc.terminate()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


class Worker:
    """The parent's handle on one warm helper process (see the module docstring)."""

    def __init__(self, *warm: str, library: str | None = None, env: dict[str, str] | None = None,
                 start: bool = True, deferred: bool = False) -> None:
        """``warm``: ``module:function``s the child runs first. ``library``: the top-level module they
        import; a process that has imported it already (a sweep, the Prefect flow, tests) runs the
        calls itself, as it does when ``start`` is false (nothing will be called, or rarely). Without
        ``library`` the calls always run in the child (``env``: its environment). ``deferred``: the
        child starts at ``start()`` or the first call, not on entering (e.g. once the step's own
        CPU-heavy part is done, so that it does not compete with a worker started earlier)."""
        self.warm, self.env, self.deferred = warm, env, deferred
        self.inline = not start or (library is not None and library in sys.modules)
        self.proc: subprocess.Popen | None = None
        self.pending: str | None = None
        if self.inline:
            _discard(self.warm)  # a child prestarted for nothing

    def __enter__(self) -> Worker:
        if not self.deferred:
            self.start()
        return self

    def start(self) -> None:
        """Start the child now (once; nothing to start when calls run in this process)."""
        if self.inline or self.proc is not None:
            return
        early = _prestarted.pop(self.warm, None) if self.env is None else None
        self.proc = early or _spawn(self.warm, self.env)

    def call(self, target: str, *args: Any) -> Any:
        """Run ``module:function(*args)`` in the worker (JSON arguments and result) and return its result."""
        return self.submit(target, *args)()

    def submit(self, target: str, *args: Any) -> Callable[[], Any]:
        """Start ``call(target, *args)`` and return a function that waits for its result: the step goes on
        with its own work meanwhile. One call at a time per worker."""
        if self.inline:  # the same JSON round trip, so a call behaves alike either way
            result = json.loads(json.dumps(_resolve(target)(*json.loads(json.dumps(args))), default=str))
            return lambda: result
        self.start()
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        if self.pending is not None:
            raise RuntimeError(f"{target}: the worker is still running {self.pending}")
        self.pending = target
        try:
            self.proc.stdin.write(json.dumps({"call": target, "args": args, "tmpdir": tempfile.gettempdir()}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # the worker is gone: wait() says so
        return lambda: self._reply(target)

    def _reply(self, target: str) -> Any:
        assert self.proc is not None and self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.pending = None
        if not line:
            code = self.proc.wait()
            raise WorkerError(f"{target}: the worker ({' '.join(self.warm)}) exited with code {code} "
                              "(its reason is in the log above)")
        reply = json.loads(line)
        if "error" in reply:
            raise WorkerError(f"{target}: {reply['error']}")
        log.debug("%s: done (worker warm in %.2fs)", target, reply.get("warm_seconds", float("nan")))
        return reply["result"]

    def __exit__(self, *exc: Any) -> None:
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        if exc[0] is not None and self.proc.poll() is None:  # the step failed: the worker's work is moot
            self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def main(warm: list[str]) -> None:
    """The child: replies on a private copy of stdout; fd 1 goes to stderr (library prints join the log)."""
    from pipelines.logs import setup_logging

    import signal

    # Ctrl-C reaches the whole process group: the step decides (it terminates its workers when it fails)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    setup_logging()
    started = time.perf_counter()
    for target in warm:
        _resolve(target)()
    warm_seconds = round(time.perf_counter() - started, 3)
    for line in sys.stdin:
        request = json.loads(line)
        os.environ["TMPDIR"] = tempfile.tempdir = request["tmpdir"]  # the step's, also when started before it
        try:
            result = _resolve(request["call"])(*request["args"])
            reply = {"result": result, "warm_seconds": warm_seconds}
        except Exception as exc:  # the parent raises it; the traceback stays in the log
            log.exception("%s failed in the worker", request["call"])
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        replies.write(json.dumps(reply, default=str) + "\n")
    # stdin closed: every call has returned (MLflow's are synchronous) and its reply is written; skip the
    # interpreter's teardown of the imported libraries (~0.5 s of the step's wall time)
    replies.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
