"""Tracking at scale, for real: PostgreSQL (the Debian package, started here by ``tests.services``),
``mlflow server`` on it with proxied artifact storage (``--serve-artifacts --artifacts-destination``),
``MLFLOW_TRACKING_URI`` pointed at it, and then:

(a) the seven steps in-process (tiny params, deploy registers): the run is FINISHED in the server with
    its params and metrics, its artifacts went through the server's proxy into the artifacts
    destination (none written client-side) and download back byte for byte, and the registry holds the
    version and alias the manifest names;
(b) the service in registry mode (``DLOPS_MODEL_URI=models:/<name>@<alias>``) as a real
    ``bentoml serve`` against that server: one digit gets 200 and ONNX Runtime's in-process answer;
(c) 4 trainings at once (4 ``python -m pipelines.train`` processes, seeds 1-4, one new experiment they
    all create): exactly 4 new FINISHED runs, 0 lost, 0 RUNNING.

Nothing is left running: the services are stopped by PID, and the last test checks that no MLflow run
of any experiment is RUNNING. Skipped only where PostgreSQL is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import ROOT, VENV_BIN, make_params, run_pipeline, write_tiny_params
from tests.helpers import free_port, start_server, stop_server, wait_ready
from tests.services import mlflow_server, postgres_server

pytestmark = [pytest.mark.scale, pytest.mark.slow]

EXPERIMENT = "dlops-scale"
CONCURRENT_EXPERIMENT = "dlops-scale-concurrent"  # created by the 4 concurrent trainings themselves
SWEEP_EXPERIMENT = "dlops-scale-sweep"
MODEL_NAME = "dlops-scale-digits"
CONCURRENT = 4


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """PostgreSQL + ``mlflow server`` on it; ``MLFLOW_TRACKING_URI`` set for the module."""
    base = tmp_path_factory.mktemp("tracking")
    with postgres_server(base / "pg") as pg:
        backend = pg.create_database("mlflow")
        artifacts = base / "artifacts"
        with mlflow_server(backend, artifacts, base / "mlflow") as uri, pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", uri)
            yield {"uri": uri, "artifacts": artifacts, "pg": pg, "backend": backend}


@pytest.fixture(scope="module")
def client(tracking_server: dict[str, Any]) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_server["uri"], registry_uri=tracking_server["uri"])


@pytest.fixture(scope="module")
def pipeline(tracking_server: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The seven steps in-process against the server; deploy registers (no Bento)."""
    work = tmp_path_factory.mktemp("pipeline")
    params = make_params(train={"experiment": EXPERIMENT, "num_threads": 1},
                         evaluate={"baselines": [], "min_score": 0.0},
                         deploy={"register": True, "build_bento": False, "model_name": MODEL_NAME})
    out = run_pipeline(params, work)
    return {"work": work, "out": out, "run_id": out["train"]["run_id"],
            "manifest": json.loads((work / "deploy" / "manifest.json").read_text())}


def _runs(client: Any, experiment: str) -> list[Any]:
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)


def test_pipeline_run_is_finished_in_the_server(client: Any, pipeline: dict[str, Any],
                                                tracking_server: dict[str, Any]) -> None:
    run = client.get_run(pipeline["run_id"])
    assert run.info.status == "FINISHED"
    assert [r.info.run_id for r in _runs(client, EXPERIMENT)] == [pipeline["run_id"]]
    params, metrics = run.data.params, run.data.metrics
    assert params["train.epochs"] == "2" and params["model.arch"] == "cnn" and params["data.source"] == "sklearn:digits"
    assert "fit_seconds" in metrics and "val_loss" in metrics
    evaluated = json.loads((pipeline["work"] / "evaluate" / "metrics.json").read_text())
    assert metrics["test_accuracy"] == pytest.approx(evaluated["accuracy"])  # evaluate logs its test metrics
    history = client.get_metric_history(pipeline["run_id"], "val_loss")
    assert len(history) == 2  # one point an epoch


def test_artifacts_go_through_the_server_proxy(client: Any, pipeline: dict[str, Any],
                                               tracking_server: dict[str, Any], tmp_path: Path) -> None:
    import mlflow

    run = client.get_run(pipeline["run_id"])
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
    listed = {a.path for a in client.list_artifacts(pipeline["run_id"])}
    assert {"curves.csv", "model.pt", "evaluate"} <= listed, listed
    got = Path(mlflow.artifacts.download_artifacts(run_id=pipeline["run_id"], artifact_path="curves.csv",
                                                   dst_path=str(tmp_path), tracking_uri=tracking_server["uri"]))
    assert got.read_bytes() == (pipeline["work"] / "train" / "curves.csv").read_bytes()
    # stored by the server in its artifacts destination, not by the client next to the project
    stored = list(tracking_server["artifacts"].rglob(f"{pipeline['run_id']}/artifacts/curves.csv"))
    assert len(stored) == 1 and stored[0].read_bytes() == got.read_bytes()
    assert not (ROOT / "mlartifacts" / EXPERIMENT).exists()


def test_registry_version_and_alias_match_the_manifest(client: Any, pipeline: dict[str, Any]) -> None:
    manifest = pipeline["manifest"]
    assert manifest["model_name"] == MODEL_NAME and manifest["alias"] == "champion"
    mv = client.get_model_version_by_alias(MODEL_NAME, manifest["alias"])
    assert str(mv.version) == str(manifest["version"]) == str(pipeline["out"]["deploy"]["version"])
    assert mv.run_id == pipeline["run_id"] == manifest["run_id"]
    assert mv.status == "READY"


def test_service_in_registry_mode_serves_the_champion(pipeline: dict[str, Any], tracking_server: dict[str, Any],
                                                      tmp_path: Path) -> None:
    import httpx
    import onnxruntime as ort
    from sklearn.datasets import load_digits

    manifest = pipeline["manifest"]
    model_uri = f"models:/{MODEL_NAME}@{manifest['alias']}"
    digit = load_digits().images[7:8]  # one raw 8x8 image, values 0..16
    session = ort.InferenceSession(str(pipeline["work"] / "deploy" / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": digit.reshape(-1, 1, 8, 8).astype(np.float32)})
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(None, port, tmp_path / "bentoml_home", tmp_path / "serve.log",
                        extra_env={"DLOPS_MODEL_URI": model_uri, "MLFLOW_TRACKING_URI": tracking_server["uri"]})
    try:
        wait_ready(proc, url, timeout=120)
        with httpx.Client(base_url=url, timeout=30) as http:
            resp = http.post("/predict", json={"images": digit.tolist()})
            assert resp.status_code == 200, resp.text
            pred = resp.json()["predictions"][0]
            assert pred["class_index"] == int(expected.argmax())
            np.testing.assert_allclose(pred["probabilities"], expected[0], rtol=1e-5, atol=1e-6)
            meta = http.get("/metadata").json()
            assert (meta["model_name"], str(meta["version"]), meta["alias"]) == (
                MODEL_NAME, str(manifest["version"]), manifest["alias"])
            assert meta["lineage"]["run_id"] == pipeline["run_id"]
            card = http.get("/card")  # fetched from the version's run: it is written after registering
            assert card.status_code == 200 and f"v{manifest['version']}" in card.text, card.text[:300]
            assert meta["lineage"]["onnx_sha256"] == manifest["onnx_sha256"]
    except Exception:
        print((tmp_path / "serve.log").read_text(errors="replace")[-5000:])
        raise
    finally:
        stop_server(proc)
    assert proc.returncode is not None


def test_four_trainings_at_once_lose_no_run(client: Any, pipeline: dict[str, Any],
                                            tracking_server: dict[str, Any], tmp_path: Path) -> None:
    """4 ``python -m pipelines.train`` processes at once on the pipeline's split/design/configure, all
    creating the same new experiment: 4 FINISHED runs, each with its own seed, none lost or RUNNING."""
    work = pipeline["work"]
    assert client.get_experiment_by_name(CONCURRENT_EXPERIMENT) is None
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_server["uri"],
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(ROOT)}
    procs = []
    for seed in range(1, CONCURRENT + 1):
        d = tmp_path / f"exp{seed}"
        d.mkdir()
        write_tiny_params(d, train={"seed": seed, "experiment": CONCURRENT_EXPERIMENT, "num_threads": 1})
        cmd = [sys.executable, "-m", "pipelines.train", "--params", str(d / "params.yaml"),
               "--split-dir", str(work / "split"), "--design-dir", str(work / "design"),
               "--configure-dir", str(work / "configure"), "--out-dir", str(d / "train")]
        log = (d / "train.log").open("wb")
        procs.append((seed, d, log, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)))
    failed = []
    for seed, d, log, proc in procs:
        try:
            rc = proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        log.close()
        if rc != 0:
            failed.append(f"seed {seed}: exit {rc}\n{(d / 'train.log').read_text(errors='replace')[-3000:]}")
    assert not failed, "\n\n".join(failed)

    run_ids = {seed: json.loads((d / "train" / "run.json").read_text())["run_id"] for seed, d, _, _ in procs}
    runs = _runs(client, CONCURRENT_EXPERIMENT)
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids.values())  # exactly 4, none lost or extra
    assert [r.info.status for r in runs] == ["FINISHED"] * CONCURRENT
    for seed, run_id in run_ids.items():
        run = client.get_run(run_id)
        assert run.data.params["train.seed"] == str(seed)
        assert len(client.get_metric_history(run_id, "val_loss")) == 2
        assert "curves.csv" in {a.path for a in client.list_artifacts(run_id)}


def test_sweep_on_postgresql_storage(client: Any, tracking_server: dict[str, Any], tmp_path: Path) -> None:
    """The same sweep as tests/test_sweep.py, Optuna's storage on the PostgreSQL server and trials
    logged to the tracking server: 2 workers, 3 trials, every one a child run of one parent."""
    import optuna

    from pipelines import sweep
    from tests.conftest import TINY

    tiny = {f"{section}.{key}": value for section, values in TINY.items() for key, value in values.items()}
    tiny.update({"train.epochs": 2, "train.experiment": SWEEP_EXPERIMENT})
    (tmp_path / "params.yaml").write_text(sweep.set_yaml_values((ROOT / "params.yaml").read_text(), tiny))
    (tmp_path / "space.yaml").write_text("optim.lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n"
                                         "model.kwargs.hidden: {choices: [16, 32]}\n")
    storage = tracking_server["pg"].create_database("optuna")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": tracking_server["uri"]}
    proc = subprocess.run([sys.executable, "-m", "pipelines.sweep", "--space", "space.yaml", "--params", "params.yaml",
                           "--dir", "sweep", "--trials", "3", "--jobs", "2", "--storage", storage],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = optuna.load_study(study_name="space", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3  # pruning starts after 5 complete trials
    runs = _runs(client, SWEEP_EXPERIMENT)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 3, [(r.info.run_name, r.data.tags.get("mlflow.parentRunId"))
                                                      for r in runs]


def test_no_run_left_running(client: Any, tracking_server: dict[str, Any]) -> None:
    from mlflow.entities import ViewType

    exps = client.search_experiments(view_type=ViewType.ALL)
    running = client.search_runs([e.experiment_id for e in exps], filter_string="attributes.status = 'RUNNING'",
                                 run_view_type=ViewType.ALL, max_results=1000)
    assert [r.info.run_id for r in running] == []
    assert {e.name for e in exps} >= {EXPERIMENT, CONCURRENT_EXPERIMENT, SWEEP_EXPERIMENT}
