"""The real `dvc repro` / `dvc exp run` in a temporary git repo holding a copy of the project."""

from __future__ import annotations

import re
import sqlite3
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import VENV_BIN, write_tiny_params
from tests.helpers import copy_project

pytestmark = pytest.mark.slow


def sh(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{out}"
    return out


def dvc(repo: Path, env: dict[str, str], *args: str) -> str:
    return sh([str(VENV_BIN / "dvc"), *args], repo, env)


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


def set_param(repo: Path, section: str, key: str, value) -> None:
    path = repo / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    raw[section][key] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def mlflow_runs(db: Path) -> int:
    with sqlite3.connect(db) as con:
        return con.execute("select count(*) from runs").fetchone()[0]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git+DVC repo with the project's code, dvc.yaml and tiny params, committed."""
    repo = tmp_path_factory.mktemp("project")
    copy_project(repo)
    write_tiny_params(repo)
    return repo


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env['PATH']}"
    env.pop("MLFLOW_TRACKING_URI", None)  # the default (absolute sqlite in the project) is under test
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@localhost", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@localhost", DVC_NO_ANALYTICS="1")
    return env


def test_repro_then_noop_then_partial_reruns(repo: Path, env: dict[str, str]) -> None:
    sh(["git", "init", "-q"], repo, env)
    dvc(repo, env, "init", "-q")
    first = dvc(repo, env, "repro")
    assert stages_run(first) == ["collect", "split", "design", "configure", "train", "evaluate", "deploy"]
    assert (repo / "artifacts" / "evaluate" / "metrics.json").exists()
    assert mlflow_runs(repo / "mlflow.db") == 1
    assert "accuracy" in dvc(repo, env, "metrics", "show")
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "baseline"], repo, env)

    assert stages_run(dvc(repo, env, "repro")) == []

    set_param(repo, "train", "epochs", 1)  # design reads every key (it checks the whole file); its output stays
    assert stages_run(dvc(repo, env, "repro")) == ["design", "train", "evaluate", "deploy"]

    set_param(repo, "split", "seed", 3)
    assert stages_run(dvc(repo, env, "repro")) == ["split", "design", "configure", "train", "evaluate", "deploy"]
    assert mlflow_runs(repo / "mlflow.db") == 3
    sh(["git", "checkout", "--", "params.yaml", "dvc.lock"], repo, env)
    dvc(repo, env, "checkout", "-q")


def test_temp_experiment_logs_into_project_mlflow(repo: Path, env: dict[str, str]) -> None:
    before = mlflow_runs(repo / "mlflow.db")
    out = dvc(repo, env, "exp", "run", "--temp", "-S", "train.seed=11")  # a value not in the run-cache
    assert stages_run(out)[-3:] == ["train", "evaluate", "deploy"]
    assert mlflow_runs(repo / "mlflow.db") == before + 1
    assert not list((repo / ".dvc").rglob("mlflow.db"))  # nothing left in the throw-away copy
    with sqlite3.connect(repo / "mlflow.db") as con:
        uri = con.execute("select artifact_uri from runs order by start_time desc limit 1").fetchone()[0]
    assert uri.startswith((repo / "mlartifacts").resolve().as_uri())
    assert "exps" not in uri
    shown = dvc(repo, env, "exp", "show", "--no-pager", "--csv")
    assert "train.epochs" in shown


def test_failed_stage_leaves_no_outputs(repo: Path, env: dict[str, str]) -> None:
    set_param(repo, "model", "name", "nope")
    proc = subprocess.run([str(VENV_BIN / "dvc"), "repro"], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "model.name: unknown architecture 'nope'" in proc.stdout + proc.stderr
    assert not (repo / "artifacts" / "design" / "model_spec.json").exists()
    assert not [p for p in (repo / "artifacts").iterdir() if ".tmp-" in p.name]
    sh(["git", "checkout", "--", "params.yaml"], repo, env)


def test_typo_section_fails_repro_instead_of_up_to_date(repo: Path, env: dict[str, str]) -> None:
    path = repo / "params.yaml"
    good = path.read_text()
    path.write_text(good + "trian:\n  epochs: 3\n")
    proc = subprocess.run([str(VENV_BIN / "dvc"), "repro"], cwd=repo, env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "trian" in out and "Traceback" not in out, out
    assert stages_run(out) == ["design"]
    path.write_text(good)


def test_unsupervised_task_repro(tmp_path: Path, env: dict[str, str]) -> None:
    """A task without a predictor (embedding: autoencoder latent + k-means) through the real
    `dvc repro`: all seven stages, its baseline, its own plot and route."""
    import json

    copy_project(tmp_path)
    write_tiny_params(tmp_path, data={"task": "embedding"}, model={"name": "autoencoder", "kwargs": {"latent": 4}},
                      embedding={"clusters": 3}, evaluate={"baselines": ["pca_kmeans"], "min_score": -1.0})
    sh(["git", "init", "-q"], tmp_path, env)
    dvc(tmp_path, env, "init", "-q")
    assert stages_run(dvc(tmp_path, env, "repro")) == ["collect", "split", "design", "configure", "train",
                                                      "evaluate", "deploy"]
    metrics = json.loads((tmp_path / "artifacts/evaluate/metrics.json").read_text())
    assert {"ari", "silhouette"} <= set(metrics) and "pca_kmeans" in json.dumps(metrics)
    manifest = json.loads((tmp_path / "artifacts/deploy/manifest.json").read_text())
    assert manifest["task"] == "embedding" and manifest["route"] == "embed"
    plots = json.loads(dvc(tmp_path, env, "plots", "show", "--json"))
    assert plots["data"]["embedding (test vectors, PCA to 2-D)"], "the embedding scatter is drawn"
    assert stages_run(dvc(tmp_path, env, "repro")) == []
