"""train + evaluate on the real digits split with a real sqlite-backed MLflow store."""

import json
import re

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipelines import configure, design, evaluate, train
from tests.conftest import make_params


@pytest.fixture()
def trained(tmp_path, digits_split, mlflow_uri):
    params = make_params(train={"epochs": 3, "patience": 5})
    design.run(params, digits_split, tmp_path / "design")
    configure.run(params, digits_split, tmp_path / "design", tmp_path / "configure")
    summary = train.run(params, digits_split, tmp_path / "design", tmp_path / "configure", tmp_path / "train")
    return params, tmp_path, summary


def test_train_logs_everything_to_mlflow(trained, mlflow_uri):
    params, tmp, summary = trained
    run_info = json.loads((tmp / "train" / "run.json").read_text())
    assert run_info["run_id"] == summary["run_id"] and run_info["tracking_uri"] == mlflow_uri
    client = MlflowClient(mlflow_uri)
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "3" and run.data.params["model.arch"] == "cnn"
    assert run.data.params["optim.optimizer"] == "adamw" and "split.seed" in run.data.params
    assert len(run.data.tags["data_hash"]) == 64 and run.data.tags["git_sha"]
    assert run.data.tags["dvc.outputs"].endswith("train/run.json")
    for key in ("train_loss", "val_loss", "train_acc", "val_acc"):
        history = client.get_metric_history(summary["run_id"], key)
        assert [m.step for m in history] == list(range(run_info["epochs_run"])), key
    artifacts = {a.path for a in client.list_artifacts(summary["run_id"])}
    assert {"model.pt", "curves.csv"} <= artifacts
    curves = (tmp / "train" / "curves.csv").read_text().splitlines()
    assert curves[0].startswith("epoch,") and len(curves) == run_info["epochs_run"] + 1


def test_checkpoint_carries_arch_and_loads_weights_only(trained):
    _, tmp, _ = trained
    ckpt = torch.load(tmp / "train" / "model.pt", weights_only=True)
    assert ckpt["arch"] == "cnn" and ckpt["kwargs"]["channels"] == [8, 16] and ckpt["num_outputs"] == 10
    net = evaluate.load_network(tmp / "train" / "model.pt")
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_evaluate_metrics_baselines_plots_gate(trained, digits_split, mlflow_uri):
    params, tmp, summary = trained
    result = evaluate.run(params, digits_split, tmp / "train", tmp / "evaluate")
    metrics = json.loads((tmp / "evaluate" / "metrics.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["macro_f1"] <= 1
    assert metrics["test_rows"] == 359
    assert set(metrics["baselines"]) == {"logreg"} and metrics["baselines"]["logreg"]["accuracy"] > 0.9
    assert metrics["best_baseline"] == "logreg"
    gate = json.loads((tmp / "evaluate" / "gate.json").read_text())
    assert gate["passed"] == result["gate"] == (metrics["accuracy"] >= 0.5) and "min_score" in gate["reason"]
    # balanced digits: accuracy decides, and metrics.json says so and why
    assert metrics["primary_metric"]["name"] == gate["metric"] == "accuracy"
    assert "balanced" in metrics["primary_metric"]["why"] and "logreg" in metrics["verdict"]
    assert metrics["dl_minus_best_baseline_accuracy"] == pytest.approx(
        metrics["accuracy"] - metrics["baselines"]["logreg"]["accuracy"], abs=1e-6)
    rows = (tmp / "evaluate" / "plots" / "confusion.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted" and len(rows) == 360
    report = json.loads((tmp / "evaluate" / "report.json").read_text())
    assert set(map(str, range(10))) <= set(report)
    assert (tmp / "evaluate" / "plots" / "classification.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp / "evaluate" / "plots" / "roc.csv").read_text().startswith("fpr,tpr")
    assert {"balanced_accuracy", "roc_auc"} <= set(metrics) and "threshold" not in metrics  # multiclass
    run = MlflowClient(mlflow_uri).get_run(summary["run_id"])
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"])
    assert "baseline_logreg_accuracy" in run.data.metrics and run.data.tags["gate"] in ("pass", "fail")
    logged = {a.path for a in MlflowClient(mlflow_uri).list_artifacts(summary["run_id"], "evaluate")}
    logged_plots = {a.path for a in MlflowClient(mlflow_uri).list_artifacts(summary["run_id"], "evaluate/plots")}
    assert "evaluate/plots/classification.png" in logged_plots and "evaluate/gate.json" in logged


def test_gate_fails_below_threshold(trained, digits_split):
    _, tmp, _ = trained
    strict = make_params(evaluate={"min_score": 1.0, "baselines": []})
    evaluate.run(strict, digits_split, tmp / "train", tmp / "evaluate")
    gate = json.loads((tmp / "evaluate" / "gate.json").read_text())
    metrics = json.loads((tmp / "evaluate" / "metrics.json").read_text())
    assert gate["passed"] is (metrics["accuracy"] >= 1.0) and gate["threshold"] == 1.0
    assert metrics["baselines"] == {} and "best_baseline" not in metrics


def test_evaluate_params_are_tags_so_reruns_on_the_same_run_work(trained, digits_split, mlflow_uri):
    _, tmp, summary = trained
    for threshold in (0.5, 0.9):  # only the evaluate section changed: same training run twice
        evaluate.run(make_params(evaluate={"min_score": threshold}), digits_split, tmp / "train", tmp / "evaluate")
    run = MlflowClient(mlflow_uri).get_run(summary["run_id"])
    assert run.data.tags["evaluate.min_score"] == "0.9"
    assert run.data.params["data.source"] == "sklearn:digits"


def test_run_is_named_after_what_it_is(trained, mlflow_uri):
    _, tmp, summary = trained
    run = MlflowClient(mlflow_uri).get_run(summary["run_id"])
    assert re.fullmatch(r"classification-cnn-[0-9a-f]{8}", run.info.run_name), run.info.run_name
    assert run.data.tags["dlops.pid"].isdigit() and run.data.tags["dlops.host"]
    assert (tmp / "train" / "metric_curves.csv").read_text().splitlines()[0] == "epoch,metric,train,val"


def test_val_loss_is_not_distorted_by_class_weights_or_smoothing():
    from models.lit import LitModel
    from pipelines.tasks.classification import Classification

    recipe = {"loss": {"name": "cross_entropy", "class_weights": [1.0, 9.0], "label_smoothing": 0.1},
              "optimizer": {"name": "adam", "lr": 0.01}, "scheduler": {"name": "none"}}
    lit = LitModel(torch.nn.Linear(3, 2), recipe, Classification(), epochs=1)
    out, y = torch.randn(64, 2), torch.randint(0, 2, (64,))
    plain = torch.nn.functional.cross_entropy(out, y)
    assert torch.isclose(lit.val_loss_fn(out, y), plain)
    assert not torch.isclose(lit.loss_fn(out, y), plain)  # training still weights and smooths


def test_dead_processes_runs_are_closed_live_ones_kept(mlflow_uri):
    import subprocess
    import sys

    from pipelines import tracking

    client = MlflowClient(mlflow_uri)
    exp = tracking.ensure_experiment(client, "reaper")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = client.create_run(exp, tags={"dlops.host": tracking.process_tags()["dlops.host"],
                                        "dlops.pid": dead.stdout.strip()}).info.run_id
    live = client.create_run(exp, tags=tracking.process_tags()).info.run_id
    elsewhere = client.create_run(exp, tags={"dlops.host": "another-machine", "dlops.pid": "1"}).info.run_id
    assert tracking.close_dead_runs(client, exp) == [gone]
    assert client.get_run(gone).info.status == "KILLED" and "died" in client.get_run(gone).data.tags[
        "dlops.closed_because"]
    assert client.get_run(live).info.status == client.get_run(elsewhere).info.status == "RUNNING"
