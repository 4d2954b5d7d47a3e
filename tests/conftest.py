"""Shared fixtures: tiny params, real digits data through collect+split, an isolated MLflow store."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipelines.params import Params, parse_params

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

TINY = {
    "train": {"epochs": 2, "batch_size": 128, "patience": 2, "augment": False, "experiment": "dlops-test"},
    "model": {"name": "cnn", "kwargs": {"channels": [8, 16], "hidden": 32, "dropout": 0.1}},
    "optim": {"scheduler": "none", "lr": 0.003},
    "evaluate": {"min_score": 0.5, "baselines": ["logreg"]},
    "deploy": {"build_bento": False, "model_name": "dlops-test"},
}


def write_tiny_params(repo: Path, **sections: dict) -> None:
    """``repo/params.yaml``: the project's complete params.yaml with TINY (then ``sections``) merged in,
    for the tests that run a real ``dvc repro`` in a copy of the project."""
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for overrides in (TINY, sections):
        for section, values in overrides.items():
            raw[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def make_params(**sections: dict) -> Params:
    """TINY params with per-section overrides merged in."""
    raw = {k: dict(v) for k, v in TINY.items()}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return parse_params(raw)


@pytest.fixture()
def tiny_params() -> Params:
    return make_params()


@pytest.fixture()
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A real sqlite-backed MLflow store private to the test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def train_tiny(params: Params, split_dir: Path, workdir: Path) -> dict:
    """design -> configure -> train -> evaluate into ``workdir``; returns the train summary."""
    from pipelines import configure, design, evaluate, train

    design.run(params, split_dir, workdir / "design")
    configure.run(params, split_dir, workdir / "design", workdir / "configure")
    summary = train.run(params, split_dir, workdir / "design", workdir / "configure", workdir / "train")
    evaluate.run(params, split_dir, workdir / "train", workdir / "evaluate")
    return summary




def run_pipeline(params: Params, work: Path) -> dict:
    """All seven steps' ``run`` functions into ``work/<step>``, as dvc.yaml chains them: step -> its result."""
    from tests.helpers import run_steps

    return run_steps(params, work)["out"]


@pytest.fixture(scope="session")
def digits_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real bundled digits dataset, collected and split once per session."""
    from pipelines import collect, split

    base = tmp_path_factory.mktemp("digits")
    params = make_params()
    collect.run(params, base / "collect")
    split.run(params, base / "collect", base / "split")
    return base / "split"


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real `bentoml serve` of the requesting module's ``model_dir`` fixture on a free 127.0.0.1 port."""
    from tests.helpers import serving

    with serving(model_dir, tmp_path_factory.mktemp("serve")) as info:
        yield info


@pytest.fixture(scope="module")
def http(server: dict[str, Any]) -> Iterator[Any]:
    import httpx

    with httpx.Client(base_url=server["url"], timeout=30) as client:
        yield client


@pytest.fixture()
def subprocess_env() -> dict[str, str]:
    """Environment for child processes: the venv first on PATH, no inherited MLflow URI."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@localhost", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@localhost")
    return env
