"""The thin ``main()`` shared by the step modules: parse paths, load params, log, call ``run``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from models import ModelError
from pipelines.files import DataError, private_tmp
from pipelines.logs import setup_logging
from pipelines.params import ParamsError, load_params

log = logging.getLogger(__name__)


def step_main(
    run: Callable[..., dict[str, Any]], paths: Sequence[str], argv: Sequence[str] | None = None
) -> None:
    """Entry point of ``python -m pipelines.<step> --params P --<path-name> DIR ...``.

    ``paths`` are the keyword names of ``run``'s path arguments; dvc.yaml passes each one, so
    dvc.yaml stays the only place where paths are written. User errors (bad params, bad data,
    unknown architecture) print one line naming the culprit and exit 2, no traceback.
    """
    spec = getattr(sys.modules[run.__module__], "__spec__", None)
    module = spec.name if spec else run.__module__  # "pipelines.x", also when run as __main__
    step = module.rsplit(".", 1)[-1]
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=run.__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    for name in paths:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=Path, required=True)
    args = parser.parse_args(argv)
    setup_logging()
    # SIGTERM (a stopped CI job, `kill`) unwinds like Ctrl-C: runs are closed, temp files removed
    signal.signal(signal.SIGTERM, _terminated)
    started = time.perf_counter()
    try:
        params = load_params(args.params)
        with private_tmp(step):
            summary = run(params, **{name: getattr(args, name) for name in paths})
    except (ParamsError, DataError, ModelError) as exc:
        log.error("%s failed: %s", step, exc)
        sys.exit(2)
    log.info("%s done in %.2fs", step, time.perf_counter() - started)
    print(json.dumps(summary, default=str))
    main_spec = getattr(sys.modules["__main__"], "__spec__", None)
    if main_spec is not None and main_spec.name == module:  # this process is the step (`python -m`)
        exit_now()


def exit_now(code: int = 0) -> None:
    """End the process as the interpreter would (other threads joined, ``atexit`` hooks run, streams
    flushed) without its teardown of every imported module: 0.3–0.5 s of a step that imported pandas,
    scikit-learn or ONNX Runtime, measured on 2 cores (README "Scale"). Only for a process that is a
    step, once its outputs are written."""
    import atexit
    import os
    import threading

    threading._shutdown()  # what the interpreter's exit runs first: thread pools' exit hooks, then joins threads
    atexit._run_exitfuncs()  # then these: logging.shutdown, weakref finalizers, multiprocessing, library hooks
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _terminated(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signum}")
