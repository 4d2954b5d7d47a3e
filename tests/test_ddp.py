"""Distributed training for real: ``train.strategy: ddp`` with ``train.devices: 2`` on CPU (gloo) runs
``python -m pipelines.train`` as dvc.yaml does; Lightning starts the second process. It must reach
the accuracy of one process (within noise), log one MLflow run (rank 0), and its checkpoint must go
through evaluate and deploy (export + parity) unchanged."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, write_tiny_params

pytestmark = [pytest.mark.slow, pytest.mark.scale]

TRAIN = {"epochs": 6, "batch_size": 64, "patience": 6, "num_threads": 1}


def _train(work: Path, name: str, env: dict[str, str], **train: object) -> Path:
    write_tiny_params(work, train={**TRAIN, **train})
    params = work / f"params-{name}.yaml"
    (work / "params.yaml").rename(params)
    out = work / f"train-{name}"
    proc = subprocess.run([sys.executable, "-m", "pipelines.train", "--params", str(params),
                           "--split-dir", str(work / "split"), "--design-dir", str(work / "design"),
                           "--configure-dir", str(work / "configure"), "--out-dir", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_ddp_on_two_cpu_processes_matches_one(tmp_path: Path) -> None:
    from pipelines import collect, configure, deploy, design, evaluate, split
    from pipelines.files import read_json
    from pipelines.params import load_params

    db = tmp_path / "mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}", "PYTHONPATH": str(ROOT)}
    os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]
    try:
        write_tiny_params(tmp_path, train=TRAIN)
        params = load_params(tmp_path / "params.yaml")
        collect.run(params, tmp_path / "collect")
        split.run(params, tmp_path / "collect", tmp_path / "split")
        design.run(params, tmp_path / "split", tmp_path / "design")
        configure.run(params, tmp_path / "split", tmp_path / "design", tmp_path / "configure")

        one = _train(tmp_path, "one", env)
        two = _train(tmp_path, "ddp", env, strategy="ddp", devices=2, accelerator="cpu")

        run = read_json(two / "run.json")
        assert run["strategy"] == "ddp" and run["processes"] == 2
        with sqlite3.connect(db) as con:
            runs = con.execute("select status from runs").fetchall()
        assert sorted(s for (s,) in runs) == ["FINISHED", "FINISHED"]  # one per training, rank 0 only
        assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]

        scores = {}
        for name, train_dir in (("one", one), ("ddp", two)):
            evaluate.run(params, tmp_path / "split", train_dir, tmp_path / f"evaluate-{name}")
            scores[name] = read_json(tmp_path / f"evaluate-{name}" / "metrics.json")["accuracy"]
        assert scores["ddp"] >= 0.85 and abs(scores["ddp"] - scores["one"]) <= 0.05, scores

        deploy.run(params, tmp_path / "split", two, tmp_path / "evaluate-ddp", tmp_path / "deploy")
        parity = json.loads((tmp_path / "deploy" / "parity.json").read_text())
        assert parity["max_abs_diff"] < 1e-4 and (tmp_path / "deploy" / "model.onnx").exists(), parity
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
