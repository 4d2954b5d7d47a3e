"""pipelines.worker: a warm child process that runs a step's calls into a heavy library."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pipelines.worker import Worker, WorkerError
from tests.conftest import ROOT


def test_calls_run_in_the_child_with_json_in_and_out():
    with Worker("os:getcwd", library="a_module_nobody_imports") as w:
        assert not w.inline
        assert w.call("os:getpid") != os.getpid()  # another process
        assert w.call("os.path:join", "a", "b") == "a/b"
        pending = w.submit("math:hypot", 3, 4)  # the caller goes on meanwhile
        assert pending() == 5.0
        assert w.call("builtins:sorted", (3, 1, 2)) == [1, 2, 3]  # tuples travel as lists
        proc = w.proc
    assert proc is not None and proc.returncode == 0  # exited when the with block closed its stdin


def test_an_error_in_the_child_is_one_line_here_and_the_worker_goes_on():
    with Worker(library="a_module_nobody_imports") as w:
        with pytest.raises(WorkerError, match=r"^math:sqrt: ValueError: math domain error$"):
            w.call("math:sqrt", -1)
        assert w.call("math:sqrt", 4) == 2.0
        with pytest.raises(WorkerError, match=r"builtins:nope: AttributeError"):
            w.call("builtins:nope")


def test_a_child_that_dies_is_an_error_not_a_hang():
    with pytest.raises(WorkerError, match=r"os:_exit: the worker \(\) exited with code 3"):
        with Worker(library="a_module_nobody_imports") as w:
            w.call("os:_exit", 3)


def test_inline_when_the_library_is_imported_or_not_started():
    with Worker("os:getcwd", library="json") as w:  # json is imported here: no child
        assert w.inline and w.proc is None
        assert w.call("os:getpid") == os.getpid()
        assert w.call("builtins:sorted", (2, 1)) == [1, 2]  # the same JSON round trip
    with Worker("os:getcwd", library=None, start=False) as w:
        assert w.inline and w.proc is None


def test_deferred_starts_at_start_or_first_call():
    with Worker("os:getcwd", deferred=True) as w:
        assert w.proc is None
        w.start()
        first = w.proc
        w.start()  # once
        assert w.proc is first and w.call("os:getpid") == first.pid


def test_child_exits_when_the_step_is_killed_by_sigkill(tmp_path):
    """A SIGKILLed step runs no cleanup: its worker sees stdin close and exits by itself."""
    code = ("import os, sys, time; from pipelines.worker import Worker\n"
            "w = Worker('os:getcwd', library='a_module_nobody_imports').__enter__()\n"
            "print(w.call('os:getpid'), flush=True); time.sleep(60)\n")
    step = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    child = int(step.stdout.readline())
    os.kill(step.pid, signal.SIGKILL)
    step.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        try:  # our grandchild: reaped by init; a zombie still answers kill(0)
            if open(f"/proc/{child}/stat").read().split()[2] == "Z":
                break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail(f"worker {child} outlived its killed step")


def test_a_prestarted_child_is_taken_over_by_its_worker(tmp_path):
    """``prestart`` (a step's ``__main__``, before its imports) starts the very child ``Worker`` then uses;
    each call runs with the caller's current temp folder (the step's private one, set after the prestart)."""
    import tempfile

    from pipelines import worker

    worker.prestart("os:getcwd")
    early = worker._prestarted[("os:getcwd",)]
    saved = tempfile.tempdir
    tempfile.tempdir = str(tmp_path)
    try:
        with Worker("os:getcwd", library="a_module_nobody_imports") as w:
            assert w.proc is early and w.call("os:getpid") == early.pid
            assert w.call("tempfile:gettempdir") == str(tmp_path)
            assert w.call("os:getenv", "TMPDIR") == str(tmp_path)  # the child's own subprocesses too
    finally:
        tempfile.tempdir = saved
    assert early.returncode == 0 and ("os:getcwd",) not in worker._prestarted


def test_a_prestarted_child_not_needed_is_stopped():
    from pipelines import worker

    worker.prestart("os:getcwd")
    early = worker._prestarted[("os:getcwd",)]
    with Worker("os:getcwd", library="a_module_nobody_imports", start=False) as w:  # e.g. deploy.register off
        assert w.inline
    assert early.poll() is not None and not worker._prestarted
    # a step that ends before taking its child over (bad params: exit 2) stops it on the way out
    code = ("import sys; from pipelines import worker\n"
            "worker.prestart('time:sleep')\n"
            "print(worker._prestarted[('time:sleep',)].pid, flush=True); sys.exit(2)\n")
    step = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert step.returncode == 2
    child = int(step.stdout.strip())
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_a_step_process_exits_without_teardown_but_with_its_hooks(tmp_path):
    """``exit_now``: pool threads finish and their exit hooks run, ``atexit`` hooks run, buffered
    output is flushed, the exit code is kept; only the teardown of imported modules is skipped."""
    marker, pooled = tmp_path / "hook-ran", tmp_path / "pool-task-done"
    code = ("import atexit, sys, time\n"
            "from concurrent.futures import ThreadPoolExecutor\n"
            "from pipelines.cli import exit_now\n"
            f"atexit.register(lambda: open({str(marker)!r}, 'w').write('yes'))\n"
            "def task():\n"
            f"    time.sleep(0.3); open({str(pooled)!r}, 'w').write('yes')\n"
            "pool = ThreadPoolExecutor(1); pool.submit(task)\n"  # left running, as libraries do
            "sys.stdout.write('buffered, no newline')\n"
            "exit_now(3)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "buffered, no newline"
    assert marker.read_text() == "yes"
    assert pooled.read_text() == "yes"  # the pool's work finished before the process ended
