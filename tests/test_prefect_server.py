"""Orchestration for real: ``prefect server start`` on PostgreSQL, a process work pool, ``prefect worker
start``, and the flow deployed with a schedule by ``python -m pipelines.flow --deploy``.

A run triggered with ``prefect deployment run`` goes through the server to the worker, which runs the
seven steps in a copy of the project (its artifacts land there, not in this checkout). The train step
fails its first attempt (``DLOPS_FLOW_FAIL_ONCE=train``, set on the worker only), so the server's
state history of that task run shows the retry: ... AwaitingRetry, Retrying, Completed. The
deployment's cron must also have become scheduled runs (the server's scheduler service).

Every service binds 127.0.0.1 on a free port, runs in its own process group and is stopped by PID;
processes carrying this test's marker that outlive their group are killed by PID too.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, TINY
from tests.helpers import copy_project, free_port
from tests.services import postgres_server

pytestmark = [pytest.mark.scale, pytest.mark.slow]

BIN = Path(sys.executable).parent
FLOW = "dlops-pipeline"
DEPLOYMENT = "scale-test"
POOL = "dlops"
# The deployment's overrides: TINY, dotted, one epoch (the whole run well under a minute of work).
OVERRIDES = {f"{section}.{key}": value for section, values in TINY.items() for key, value in values.items()}
OVERRIDES.update({"train.epochs": 1, "train.patience": 1})
MARKER = "DLOPS_PREFECT_SCALE_TEST"


def _env(tmp: Path, api_url: str, db_url: str, marker: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_", "DLOPS_")) and k != "TMPDIR"}
    env.update(
        PREFECT_HOME=str(tmp / "prefect_home"),
        PREFECT_API_URL=api_url,
        PREFECT_API_DATABASE_CONNECTION_URL=db_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",          # the API is what is tested; the UI reads the same states
        PREFECT_WORKER_QUERY_SECONDS="2",    # poll for runs every 2 s, not 10
        PREFECT_CLI_PROMPT="false",
        DO_NOT_TRACK="1",
        PYTHONUNBUFFERED="1",
        **{MARKER: marker},
    )
    return env


def _marked_pids(marker: str) -> list[int]:
    """PIDs of live processes whose environment carries ``MARKER=marker`` (ours and their children)."""
    needle = f"{MARKER}={marker}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
    return pids


def _kill_marked(marker: str) -> list[int]:
    left = _marked_pids(marker)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


@contextlib.contextmanager
def _service(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``cmd`` in its own process group, stdout+stderr to ``log``; SIGTERM (then SIGKILL) to the group."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


def _api(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=15) as resp:
        return json.loads(resp.read() or b"null")


def _wait_healthy(proc: subprocess.Popen[bytes], api_url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode} before it was healthy")
        with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
            if _api(f"{api_url}/health") is True:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{api_url}/health not healthy after {timeout} s")


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _tails(*logs: Path) -> str:
    return "\n".join(f"--- {log.name} ---\n{log.read_text(errors='replace')[-4000:]}" for log in logs if log.exists())


def test_deployment_runs_on_a_process_worker_through_the_server(tmp_path):
    project = tmp_path / "project"
    copy_project(project)
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    before = sorted(p.name for p in (ROOT / "artifacts").iterdir()) if (ROOT / "artifacts").exists() else []
    marker = uuid.uuid4().hex
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    server_log, worker_log = tmp_path / "prefect-server.log", tmp_path / "prefect-worker.log"
    # a daily schedule that cannot come due while the test runs (12 h from now)
    cron = f"0 {(dt.datetime.now(dt.timezone.utc).hour + 12) % 24} * * *"
    started = time.monotonic()
    try:
        with postgres_server(tmp_path) as pg:
            pg.create_database("prefect")
            env = _env(tmp_path, api_url, pg.url("prefect", driver="postgresql+asyncpg"), marker)
            server_cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
            with _service(server_cmd, tmp_path, env, server_log) as server:
                _wait_healthy(server, api_url, timeout=150)
                made = _run([str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process"], tmp_path, env)
                assert made.returncode == 0, made.stdout + made.stderr

                # a bad key is refused by name before anything is deployed
                bad = _run([sys.executable, "-m", "pipelines.flow", "--deploy", "--pool", POOL, "--name", "bad",
                            "--set", "train.epochz=1"], project, env)
                assert bad.returncode != 0 and "train.epochz: unknown key" in bad.stderr, bad.stderr
                assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr

                sets = [f"--set={k}={json.dumps(v)}" for k, v in OVERRIDES.items()]
                deployed = _run([sys.executable, "-m", "pipelines.flow", "--deploy", "--pool", POOL,
                                 "--name", DEPLOYMENT, "--cron", cron, *sets], project, env)
                assert deployed.returncode == 0, deployed.stdout + deployed.stderr
                deployment = _api(f"{api_url}/deployments/name/{FLOW}/{DEPLOYMENT}")
                assert deployment["work_pool_name"] == POOL
                assert deployment["parameters"]["overrides"] == OVERRIDES
                assert deployment["entrypoint"] == "pipelines.flow.dlops_pipeline"
                assert [(s["schedule"]["cron"], s["active"]) for s in deployment["schedules"]] == [(cron, True)]
                assert not _api(f"{api_url}/deployments/filter", {"deployments": {"name": {"any_": ["bad"]}}})

                worker_env = {**env, "DLOPS_FLOW_FAIL_ONCE": "train"}
                worker_cmd = [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--name", "scale-test-worker"]
                with _service(worker_cmd, tmp_path, worker_env, worker_log) as worker:
                    # run-time parameters replace the deployment's: one more override rides along
                    params = {"overrides": {**OVERRIDES, "train.seed": 11}}
                    triggered = _run([str(BIN / "prefect"), "deployment", "run", f"{FLOW}/{DEPLOYMENT}",
                                      "--params", json.dumps(params)], tmp_path, env)
                    assert triggered.returncode == 0, triggered.stdout + triggered.stderr
                    run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", triggered.stdout).group(1)

                    deadline = time.monotonic() + 240
                    while True:
                        flow_run = _api(f"{api_url}/flow_runs/{run_id}")
                        if flow_run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                            break
                        assert worker.poll() is None, "prefect worker exited\n" + _tails(worker_log)
                        assert time.monotonic() < deadline, f"flow run still {flow_run['state_name']}\n" + \
                            _tails(server_log, worker_log)
                        time.sleep(2)
                    assert flow_run["state_type"] == "COMPLETED", \
                        f"{flow_run['state_name']}: {flow_run['state'].get('message')}\n" + _tails(worker_log)
                    assert flow_run["deployment_id"] == deployment["id"]
                    assert flow_run["parameters"]["overrides"]["train.seed"] == 11

                    # task-run states reach the server as events: wait until all seven are recorded
                    stages = ["collect", "split", "design", "configure", "train", "evaluate", "deploy"]
                    deadline = time.monotonic() + 30
                    while True:
                        task_runs = _api(f"{api_url}/task_runs/filter",
                                         {"flow_runs": {"id": {"any_": [run_id]}}, "sort": "EXPECTED_START_TIME_ASC"})
                        done = {t["name"].rsplit("-", 1)[0]: t for t in task_runs if t["state_type"] == "COMPLETED"}
                        if set(done) == set(stages) or time.monotonic() > deadline:
                            break
                        time.sleep(1)
                    assert sorted(done) == sorted(stages), [(t["name"], t["state_name"]) for t in task_runs]
                    train = done["train"]
                    assert train["run_count"] == 2
                    history = [s["name"] for s in _api(f"{api_url}/task_run_states/?task_run_id={train['id']}")]
                    assert history[-3:] == ["AwaitingRetry", "Retrying", "Completed"], history
                    assert "Failed" not in history
                    for name in ("collect", "evaluate"):
                        assert done[name]["run_count"] == 1

                # the server's scheduler turned the cron into scheduled runs (12 h ahead: none ran)
                scheduled = _api(f"{api_url}/flow_runs/filter", {
                    "deployments": {"id": {"any_": [deployment["id"]]}},
                    "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}, "sort": "EXPECTED_START_TIME_ASC"})
                scheduler_log = _tails(server_log)
    finally:
        left = _kill_marked(marker)
    assert not left, f"processes left running after the services stopped: {left}"
    elapsed = time.monotonic() - started

    # the worker ran in the copy: its artifacts are there, and this checkout's artifacts/ is untouched
    stages_yaml = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    outs = [next(iter(o)) if isinstance(o, dict) else o for s in stages_yaml.values()
            for key in ("outs", "metrics") for o in s.get(key, [])]
    missing = [o for o in outs if not (project / o).exists()]
    assert not missing, f"the flow run did not write {missing}"
    run = json.loads((project / "artifacts" / "train" / "run.json").read_text())
    assert run["epochs_run"] == 1  # the deployment's overrides reached the step
    assert run["tracking_uri"] == f"sqlite:///{project.resolve() / 'mlflow.db'}"
    after = sorted(p.name for p in (ROOT / "artifacts").iterdir()) if (ROOT / "artifacts").exists() else []
    assert after == before

    # Prefect 3.8.8's scheduler bulk-inserts runs with a "state" key, a hybrid attribute that SQLAlchemy
    # 2.1 refuses in bulk DML ("Can't evaluate bulk DML statement"): no run is ever scheduled. 2.0 works.
    import sqlalchemy

    assert scheduled, (f"the scheduler made no runs from the deployment's cron (SQLAlchemy "
                       f"{sqlalchemy.__version__}; Prefect 3.8.8 needs sqlalchemy<2.1)\n{scheduler_log}")
    first = dt.datetime.fromisoformat(scheduled[0]["expected_start_time"])
    assert (first.hour, first.minute) == (int(cron.split()[1]), 0)
    assert all(r["auto_scheduled"] and r["parameters"]["overrides"] == OVERRIDES for r in scheduled)
    print(f"server + pool + deploy + worker run: {elapsed:.0f} s")
