"""A real `dvc repro` SIGKILLed in train, evaluate and deploy, then run again: nothing is left behind,
no run stays RUNNING, every registry version has its tags, aliases only point at completed deploys.
Then params go back to an earlier state: the deployed manifest, the registry and the served
/metadata still agree (deploy is never restored from DVC's run-cache).

The kills come from ``DLOPS_FAILPOINT`` (pipelines/files.py: the stage SIGKILLs its whole process
group, dvc included, at a named point), so every run kills at the same moment.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import VENV_BIN, write_tiny_params
from tests.helpers import copy_project, serving

pytestmark = pytest.mark.slow

NAME = "dlops-crash"
TAGS = ("test_accuracy", "primary_metric", "data_hash", "gate", "onnx_sha256", "alias_reason")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict:
    repo = tmp_path_factory.mktemp("crash-project")
    copy_project(repo)
    write_tiny_params(repo, deploy={"model_name": NAME}, train={"epochs": 1})
    tmpdir = tmp_path_factory.mktemp("tmpdir")
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "TMPDIR": str(tmpdir),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@localhost", "DVC_NO_ANALYTICS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DLOPS_FAILPOINT", None)
    for cmd in (["git", "init", "-q"], [str(VENV_BIN / "dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    return {"repo": repo, "env": env, "tmpdir": tmpdir}


def repro(project: dict, failpoint: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**project["env"], **({"DLOPS_FAILPOINT": failpoint} if failpoint else {})}
    # its own process group: the failpoint kills dvc and the stage together, like `kill -9 -<pgid>`
    return subprocess.run([str(VENV_BIN / "dvc"), "repro"], cwd=project["repo"], env=env, capture_output=True,
                          text=True, timeout=600, start_new_session=True)


def client(project: dict):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{project['repo'] / 'mlflow.db'}")


def runs(project: dict) -> list:
    c = client(project)
    return [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id])]


def aliases(c) -> dict[str, str]:
    return {k: str(v) for k, v in c.get_registered_model(NAME).aliases.items()}


def debris(project: dict) -> list[str]:
    artifacts = project["repo"] / "artifacts"
    left = [str(p) for p in artifacts.rglob(".*") if ".tmp" in p.name or "journal" in p.name]
    # torchinductor_<user>: torch's own compile cache, shared by every torch process and meant to stay
    return left + [str(p) for p in project["tmpdir"].iterdir() if not p.name.startswith("torchinductor_")]


def test_sigkill_in_train_evaluate_and_deploy_leaves_nothing_behind(project: dict) -> None:
    killed = repro(project, "train.epoch")
    assert killed.returncode != 0
    assert [r.info.status for r in runs(project)] == ["RUNNING"]  # what a kill -9 leaves ...
    assert list((project["repo"] / "artifacts").glob(".train.tmp-*"))
    assert any(p.name.startswith("dlops-pid") for p in project["tmpdir"].iterdir())

    # ... and the next run cleans up, then is killed itself in evaluate after logging its metrics
    assert repro(project, "evaluate.logged").returncode != 0
    statuses = sorted(r.info.status for r in runs(project))
    assert statuses == ["KILLED", "RUNNING"] or statuses == ["FINISHED", "KILLED"]
    assert not list((project["repo"] / "artifacts").glob(".train.tmp-*"))

    assert repro(project, "deploy.registered").returncode != 0
    c = client(project)
    versions = c.search_model_versions(f"name = '{NAME}'")
    assert len(versions) == 1 and all(t in versions[0].tags for t in TAGS)  # tags came with the version
    assert not aliases(c)  # registered, but its deploy never finished

    killed = repro(project, "deploy.alias_moved")
    assert killed.returncode != 0
    assert aliases(c) == {"champion": "1"} or aliases(c) == {"challenger": "1"}  # moved, deploy unfinished ...
    done = repro(project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "the alias points at no version again" in done.stdout + done.stderr  # ... put back, then re-done

    assert sorted(r.info.status for r in runs(project)) == ["FINISHED", "KILLED"]
    for mv in c.search_model_versions(f"name = '{NAME}'"):
        assert all(t in mv.tags for t in TAGS), mv.tags
    manifest = json.loads((project["repo"] / "artifacts" / "deploy" / "manifest.json").read_text())
    assert aliases(c) == {manifest["alias"]: manifest["version"]}
    assert debris(project) == []
    history = c.get_metric_history(manifest["run_id"], "test_accuracy")
    assert len(history) == 1  # evaluate ran twice on this run: one point


def test_going_back_to_earlier_params_keeps_manifest_registry_and_metadata_in_agreement(project: dict,
                                                                                       tmp_path: Path) -> None:
    repo, c = project["repo"], client(project)
    first = json.loads((repo / "artifacts" / "deploy" / "manifest.json").read_text())
    params = (repo / "params.yaml").read_text()
    raw = yaml.safe_load(params)
    raw["train"]["seed"] = 11
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert repro(project).returncode == 0
    second = json.loads((repo / "artifacts" / "deploy" / "manifest.json").read_text())
    assert second["version"] != first["version"]

    (repo / "params.yaml").write_text(params)  # back: train and evaluate come from DVC's run-cache
    back = repro(project)
    assert back.returncode == 0, back.stdout + back.stderr
    assert "Stage 'train' is cached - skipping run" in back.stdout
    assert "Running stage 'deploy'" in back.stdout  # never restored: it asks the registry again
    manifest = json.loads((repo / "artifacts" / "deploy" / "manifest.json").read_text())
    assert manifest["version"] == first["version"]  # the same model, not registered twice
    holder = c.get_model_version_by_alias(NAME, manifest["alias"])
    assert str(holder.version) == manifest["version"]
    assert aliases(c).get(manifest["alias"]) == manifest["version"]
    with serving(repo / "artifacts" / "deploy", tmp_path) as server:
        with urllib.request.urlopen(f"{server['url']}/metadata", timeout=10) as resp:
            served = json.loads(resp.read())
    assert (served["version"], served["alias"]) == (manifest["version"], manifest["alias"])
