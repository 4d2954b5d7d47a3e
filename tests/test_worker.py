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
