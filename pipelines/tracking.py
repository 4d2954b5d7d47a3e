"""MLflow set-up, done at the entrypoint of the steps that log (never at import).

Default tracking store: an *absolute* sqlite path in the project root, so that experiments run
by ``dvc exp run --temp/--queue`` in a throw-away copy under ``.dvc/tmp/exps/`` still log into the
project's own database. ``MLFLOW_TRACKING_URI`` overrides it (e.g. a tracking server).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
_EXP_TMP = (".dvc", "tmp", "exps")


def project_root(start: Path | None = None) -> Path:
    """The project directory, seen through DVC's temporary experiment workspaces."""
    path = (start or Path.cwd()).resolve()
    parts = path.parts
    for i in range(len(parts) - len(_EXP_TMP)):
        if parts[i:i + len(_EXP_TMP)] == _EXP_TMP:
            return Path(*parts[:i])
    return path


def tracking_uri(start: Path | None = None) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{project_root(start) / DB_NAME}"


def default_artifact_location(experiment: str, start: Path | None = None) -> str | None:
    """Artifacts beside the default sqlite store; None lets a configured server decide."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return (project_root(start) / ARTIFACTS_DIR / experiment).as_uri()


def get_client() -> Any:
    """An ``MlflowClient`` on the resolved tracking URI (imports mlflow: ~6 s cold).

    Creating a client on a new sqlite file runs MLflow's schema migrations; two stages doing that
    at once (``dvc exp run --queue -j 2``) corrupt the alembic version table, so it is serialised
    with a lock file beside the database.
    """
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(db) + ".lock", timeout=120):
        return MlflowClient(tracking_uri=uri)


def ensure_experiment(client: Any, name: str) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=default_artifact_location(name))
    except MlflowException as exc:  # another process created it between the two calls
        if exc.error_code != "RESOURCE_ALREADY_EXISTS" or (exp := client.get_experiment_by_name(name)) is None:
            raise
        return exp.experiment_id


def git_sha(cwd: Path | None = None) -> str:
    """HEAD of the repository (the experiment's own commit inside a DVC temp workspace)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def flatten(prefix: str, obj: Any) -> dict[str, str]:
    """Nested params as ``a.b.c -> str`` pairs for ``log_batch``."""
    if isinstance(obj, dict):
        out: dict[str, str] = {}
        for k, v in obj.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: str(obj)}


def process_tags() -> dict[str, str]:
    """Which process owns a run: a run still RUNNING whose process is gone was killed."""
    return {"dlops.host": socket.gethostname(), "dlops.pid": str(os.getpid())}


def close_dead_runs(client: Any, experiment_id: str) -> list[str]:
    """Mark ``KILLED`` the runs of this experiment left ``RUNNING`` by a dlops process of this machine
    that no longer exists (``kill -9``, a lost machine); runs of live processes and of other machines
    are left alone. Returns the run ids it closed."""
    from mlflow.exceptions import MlflowException

    from pipelines.files import pid_alive

    host, closed = socket.gethostname(), []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        pid = tags.get("dlops.pid", "")
        if tags.get("dlops.host") != host or not pid.isdigit() or pid_alive(int(pid)):
            continue
        try:
            client.set_tag(run.info.run_id, "dlops.closed_because", f"its process {pid} died while the run was RUNNING")
            client.set_terminated(run.info.run_id, status="KILLED")
        except MlflowException:
            # two steps starting at once (a sweep's parallel trials) both close it: the second insert of
            # the tag fails; what matters is that the run is closed
            if client.get_run(run.info.run_id).info.status == "RUNNING":
                client.set_terminated(run.info.run_id, status="KILLED")
            continue
        closed.append(run.info.run_id)
        log.warning("MLflow run %s was left RUNNING by process %s, which died: marked KILLED", run.info.run_id, pid)
    return closed


def run_name(task: str, arch: str, params: dict[str, Any]) -> str:
    """A run name that says what the run is: ``<task>-<arch>-<digest of the params>`` (the same
    params give the same digest, so repeated runs of one configuration are easy to spot)."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{task}-{arch}-{digest}"
