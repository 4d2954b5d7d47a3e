"""The data remote, for real: one clone runs the pipeline and pushes, a fresh clone pulls and has nothing
to run. A copy of the project in a temporary git repo, ``dvc remote add -d storage <tmp>/remote`` (a local
remote: a directory, as an NFS mount or any shared path would be), ``dvc repro`` on tiny params,
``git commit``, ``dvc push``; then ``git clone`` into a fresh directory, ``dvc pull``: ``dvc status`` is
clean, ``dvc repro`` runs no stage, and every artifact is byte-identical (md5) to the first clone's.

The deploy stage's output (``artifacts/deploy``) is ``persist: true`` (dvc.yaml): DVC still caches it, so
``dvc push`` / ``dvc pull`` carry it like any other output, but DVC never saves a stage with a persistent
output to the run-cache: ``dvc push --run-cache`` sends one entry per other stage and none for deploy
(so a clone can never restore a stale manifest from the run-cache; deploy runs and asks the registry).

Only the local remote runs here: an SSH remote needs an sshd and the dvc-ssh plug-in, neither of which
this machine has (the S3-compatible remote is in infra/dvc-remote.example, for the compose MinIO).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import VENV_BIN, write_tiny_params
from tests.helpers import copy_project
from tests.test_dvc_pipeline import dvc, sh, stages_run

pytestmark = [pytest.mark.scale, pytest.mark.slow]

STAGES = ["collect", "split", "design", "configure", "train", "evaluate", "deploy"]


def md5_tree(root: Path) -> dict[str, str]:
    """``{relative path: md5}`` of every file under ``root``."""
    return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env['PATH']}"
    env.pop("MLFLOW_TRACKING_URI", None)  # each clone's own sqlite store, as on a laptop
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@localhost", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@localhost", DVC_NO_ANALYTICS="1")
    return env


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> dict[str, Any]:
    """The first clone: repro on tiny params, committed, pushed (outputs and run-cache) to a local remote."""
    base = tmp_path_factory.mktemp("dvc-remote")
    origin, remote = base / "origin", base / "remote"
    origin.mkdir()
    copy_project(origin)
    write_tiny_params(origin)
    sh(["git", "init", "-q"], origin, env)
    dvc(origin, env, "init", "-q")
    dvc(origin, env, "remote", "add", "-d", "storage", str(remote))  # into .dvc/config: committed
    assert stages_run(dvc(origin, env, "repro")) == STAGES
    sh(["git", "add", "-A"], origin, env)
    sh(["git", "commit", "-qm", "pipeline on tiny params"], origin, env)
    pushed = dvc(origin, env, "push")
    assert re.search(r"\d+ files? pushed", pushed), pushed
    assert "in sync" in dvc(origin, env, "status", "--cloud")  # everything the lock names is in the remote
    dvc(origin, env, "push", "--run-cache")
    return {"base": base, "origin": origin, "remote": remote}


def test_fresh_clone_pulls_and_has_nothing_to_run(pushed: dict[str, Any], env: dict[str, str]) -> None:
    origin, clone = pushed["origin"], pushed["base"] / "clone"
    sh(["git", "clone", "-q", str(origin), str(clone)], pushed["base"], env)
    assert not (clone / "artifacts").exists() and not (clone / ".dvc" / "cache").exists()
    assert re.search(rf"storage\s+{re.escape(str(pushed['remote']))}\s+\(default\)",
                     dvc(clone, env, "remote", "list"))

    pulled = dvc(clone, env, "pull")
    assert re.search(r"\d+ files? fetched", pulled), pulled
    assert "Data and pipelines are up to date." in dvc(clone, env, "status")
    repro = dvc(clone, env, "repro")
    assert stages_run(repro) == [], repro
    assert "Data and pipelines are up to date." in repro
    assert not (clone / "mlflow.db").exists()  # nothing ran: no stage opened the tracking store

    assert md5_tree(clone / "artifacts") == md5_tree(origin / "artifacts")
    assert {"manifest.json", "model.onnx"} <= set(md5_tree(clone / "artifacts" / "deploy"))
    assert (clone / "dvc.lock").read_bytes() == (origin / "dvc.lock").read_bytes()


def test_persist_output_is_pushed_but_never_run_cached(pushed: dict[str, Any]) -> None:
    """What DVC does with deploy's ``persist: true`` output: pushed to the remote like every output (its
    directory object is there), but absent from the run-cache pushed with ``--run-cache``."""
    remote = pushed["remote"]
    lock = yaml.safe_load((pushed["origin"] / "dvc.lock").read_text())["stages"]
    (deploy_out,) = lock["deploy"]["outs"]
    assert deploy_out["path"] == "artifacts/deploy" and deploy_out["md5"].endswith(".dir")
    assert (remote / "files" / "md5" / deploy_out["md5"][:2] / deploy_out["md5"][2:]).is_file()

    entries = [p for p in (remote / "runs").rglob("*") if p.is_file()]
    cached = sorted(re.match(r"python -m pipelines\.(\w+)", yaml.safe_load(p.read_text())["cmd"]).group(1)
                    for p in entries)
    assert cached == sorted(s for s in STAGES if s != "deploy"), cached
