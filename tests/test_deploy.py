"""deploy: ONNX export + parity gate, and champion/challenger promotion in a real MLflow registry."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from mlflow.tracking import MlflowClient

from pipelines import deploy
from pipelines.deploy import CHALLENGER, CHAMPION, DeployError, choose_alias
from pipelines.files import write_json
from tests.conftest import make_params, train_tiny


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, digits_split):
    """One tiny trained + evaluated model and its own sqlite MLflow store for the module."""
    tmp = tmp_path_factory.mktemp("deploy")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        train_tiny(make_params(), digits_split, tmp)
        yield tmp


@pytest.fixture()
def registry(workdir, monkeypatch):
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return MlflowClient(uri)


def _gate(value, passed=True, metric="accuracy"):
    return {"passed": passed, "metric": metric, "value": value, "reason": f"test {metric} {value}"}


def test_choose_alias_compares_the_same_metric_and_says_when_data_differ():
    champ = {"version": "3", "value": 0.9, "data_hash": "abc", "metric": "accuracy"}
    assert choose_alias(_gate(0.9), None, "abc")[0] == CHAMPION
    assert choose_alias(_gate(0.9), champ, "abc")[0] == CHAMPION
    alias, why = choose_alias(_gate(0.8), champ, "abc")
    assert alias == CHALLENGER and "0.8000 < champion v3's 0.9000" in why and "other data" not in why
    alias, why = choose_alias(_gate(0.99, passed=False), None, "abc")
    assert alias == CHALLENGER and "gate failed" in why
    alias, why = choose_alias(_gate(0.95), champ, "def")
    assert alias == CHAMPION and "evaluated on other data (data_hash abc vs def)" in why
    # the champion was judged on another metric and has no value of this one: not comparable
    alias, why = choose_alias(_gate(0.7, metric="roc_auc"), {**champ, "value": None}, "abc")
    assert alias == CHAMPION and "has no test roc_auc to compare (it was judged on accuracy)" in why


def _deploy(workdir, digits_split, name, out="deploy", **overrides):
    params = make_params(deploy={"model_name": name, **overrides})
    return deploy.run(params, digits_split, workdir / "train", workdir / "evaluate", workdir / out)


def _set_eval(workdir, accuracy, passed):
    metrics = json.loads((workdir / "evaluate" / "metrics.json").read_text())
    gate = json.loads((workdir / "evaluate" / "gate.json").read_text())
    metrics["accuracy"], gate["passed"], gate["value"] = accuracy, passed, accuracy
    write_json(workdir / "evaluate" / "metrics.json", metrics)
    write_json(workdir / "evaluate" / "gate.json", gate)


def test_export_parity_manifest_and_first_champion(workdir, digits_split, registry):
    _set_eval(workdir, 0.95, True)
    summary = _deploy(workdir, digits_split, "digits-a")
    out = workdir / "deploy"
    model = onnx.load(str(out / "model.onnx"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 8, 8]  # dynamic batch, fixed image
    assert not list(out.glob("*.data"))  # one self-contained file
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4 and parity["label_agreement"] == 1.0
    assert [r["batch_size"] for r in parity["by_batch_size"]] == [1, 7, 64] and parity["rows"] == 359
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["alias"] == summary["alias"] == CHAMPION and manifest["version"] == "1"
    assert manifest["input"]["shape"] == [-1, 1, 8, 8] and manifest["input"]["value_range"] == [0.0, 16.0]
    assert manifest["classes"] == [str(i) for i in range(10)] and len(manifest["onnx_sha256"]) == 64
    run_id = json.loads((workdir / "train" / "run.json").read_text())["run_id"]
    assert manifest["run_id"] == run_id
    mv = registry.get_model_version_by_alias("digits-a", CHAMPION)
    assert str(mv.version) == "1" and mv.run_id == run_id and mv.tags["test_accuracy"] == "0.95"


def test_worse_model_becomes_challenger_better_takes_over(workdir, digits_split, registry):
    _set_eval(workdir, 0.95, True)
    _deploy(workdir, digits_split, "digits-b")
    _set_eval(workdir, 0.90, True)
    worse = _deploy(workdir, digits_split, "digits-b")
    assert worse["alias"] == CHALLENGER
    assert str(registry.get_model_version_by_alias("digits-b", CHAMPION).version) == "1"
    assert str(registry.get_model_version_by_alias("digits-b", CHALLENGER).version) == "2"
    reason = json.loads((workdir / "deploy" / "manifest.json").read_text())["alias_reason"]
    assert "0.9000 < champion v1's 0.9500" in reason
    mv = registry.get_model_version("digits-b", "2")
    assert mv.tags["primary_metric"] == "accuracy" and mv.tags["data_hash"] == manifest_hash(workdir)
    _set_eval(workdir, 0.97, False)
    assert _deploy(workdir, digits_split, "digits-b")["alias"] == CHALLENGER  # gate failed: never champion
    _set_eval(workdir, 0.97, True)
    assert _deploy(workdir, digits_split, "digits-b")["alias"] == CHAMPION
    assert str(registry.get_model_version_by_alias("digits-b", CHAMPION).version) == "4"


def manifest_hash(workdir):
    return json.loads((workdir / "deploy" / "manifest.json").read_text())["data_hash"]


def test_parity_failure_fails_the_stage_without_outputs(workdir, digits_split, registry):
    with pytest.raises(DeployError, match=r"parity gate failed: max \|onnx - torch\| = .* label agreement"):
        _deploy(workdir, digits_split, "digits-c", out="deploy-strict", parity_atol=1e-12)
    assert not (workdir / "deploy-strict").exists()
    with pytest.raises(Exception):
        registry.get_registered_model("digits-c")  # nothing was registered


def test_service_loads_champion_from_registry(workdir, digits_split, registry, monkeypatch):
    """serving's registry mode: models:/name@champion -> the ONNX + manifest deploy registered."""
    from serving.model import load_model

    _set_eval(workdir, 0.95, True)
    _deploy(workdir, digits_split, "digits-r")
    monkeypatch.setenv("DLOPS_MODEL_URI", "models:/digits-r@champion")
    loaded = load_model()
    assert loaded.manifest["version"] == "1" and loaded.manifest["alias"] == CHAMPION
    local = json.loads((workdir / "deploy" / "manifest.json").read_text())
    assert loaded.manifest["onnx_sha256"] == local["onnx_sha256"]  # the same bytes as exported
    X = np.random.default_rng(0).uniform(0, 16, (3, 1, 8, 8)).astype(np.float32)
    assert loaded.predict_proba(X).shape == (3, 10)


def test_registry_mode_downloads_once_and_cleans_up(workdir, digits_split, registry, monkeypatch):
    """A process serving models:/...@champion downloads once (workers reuse it through the env) and the
    download is gone when the process exits; without a reachable registry: one clear line, fast."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from serving.model import RESOLVED_DIR, ModelLoadError, resolve_model_dir

    _set_eval(workdir, 0.95, True)
    _deploy(workdir, digits_split, "digits-once")
    uri = "models:/digits-once@champion"
    code = ("import os; from serving.model import load_model, RESOLVED_DIR; a = load_model(); b = load_model(); "
            "print(os.environ[RESOLVED_DIR], a.manifest['version'], b.source)")
    env = {**os.environ, "DLOPS_MODEL_URI": uri}  # MLFLOW_TRACKING_URI: the registry fixture's store
    env.pop(RESOLVED_DIR, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    model_dir, version, source = out.stdout.split()
    assert version == "1" and source == uri
    assert not Path(model_dir).exists()  # removed at exit

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(ModelLoadError, match=rf"^{uri}: set MLFLOW_TRACKING_URI"):
        resolve_model_dir({"DLOPS_MODEL_URI": uri})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match=rf"^{uri}: cannot load from the MLflow registry at http://127.0.0.1:9: "):
        resolve_model_dir({"DLOPS_MODEL_URI": uri})
    assert time.monotonic() - started < 15
