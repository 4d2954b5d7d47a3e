"""Tables through all seven steps: a generated churn-like CSV (mixed types, missing values, ~5 %
positive) and the bundled diabetes regression, with a real sqlite MLflow registry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest

from pipelines import evaluate
from pipelines.modalities.tabular import prep as tabular_prep
from pipelines.data import load_split
from pipelines.plugins import predict_outputs
from pipelines.evaluate import load_network
from serving.runtime import make_session, softmax
from tests.conftest import make_params, run_pipeline

def churn_csv(path: Path, n: int = 1200, seed: int = 0) -> pd.DataFrame:
    """Churn-like customers: contract type, spend and region drive a ~5 % "Yes" rate."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "customer_id": [f"C{100000 + i}" for i in range(n)],
        "age": rng.integers(18, 80, n).astype(float),
        "gender": rng.choice(["F", "M"], n),
        "region": rng.choice(["north", "south", "east", "west"], n),
        "contract": rng.choice(["monthly", "yearly", "two-year"], n, p=[0.5, 0.3, 0.2]),
        "monthly_spend": rng.gamma(2.0, 30.0, n).round(2),
        "support_calls": rng.poisson(1.0, n),
        "paperless": rng.choice(["Yes", "No"], n),
    })
    logit = (-6.3 + 2.8 * (df.contract == "monthly") + 0.025 * (df.monthly_spend - 60)
             + 0.6 * df.support_calls + 0.7 * (df.region == "south"))
    df["churned"] = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "Yes", "No")
    df.loc[rng.choice(n, 60, replace=False), "age"] = np.nan
    df.loc[rng.choice(n, 40, replace=False), "region"] = None
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return df


def pipeline_predictions(work: Path) -> np.ndarray:
    """What the pipeline itself predicts for its test split (torch, preprocessed arrays)."""
    X_test, _ = load_split(work / "split", "test")
    return predict_outputs(load_network(work / "train" / "model.pt"), X_test)


@pytest.fixture(scope="module")
def churn_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("churn")
    churn_csv(work / "data" / "raw" / "customers.csv")
    params = make_params(
        data={"source": "csv:data/raw/customers.csv", "target": "churned", "task": "auto"},
        model={"name": "tab_mlp", "kwargs": {"hidden": [32, 16]}},
        optim={"class_weights": "balanced", "label_smoothing": 0.0},
        train={"epochs": 15, "batch_size": 64, "patience": 5},
        evaluate={"min_score": 0.5, "baselines": ["logreg", "gboost"], "threshold_objective": "f1"},
        deploy={"model_name": "churn-test", "build_bento": False},
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
        yield work, run_pipeline(params, work)


def test_churn_profile_and_preprocessing(churn_run):
    work, _ = churn_run
    prof = json.loads((work / "collect" / "profile.json").read_text())
    assert prof["task"] == "classification" and prof["classes"] == ["No", "Yes"]
    assert [d["name"] for d in prof["dropped"]] == ["customer_id"]
    types = {c["name"]: c["type"] for c in prof["columns"]}
    assert types["monthly_spend"] == "numeric" and types["region"] == types["paperless"] == "categorical"
    assert 0.02 < prof["class_balance"]["Yes"] / prof["rows"] < 0.10
    state = json.loads((work / "split" / "preprocess.json").read_text())
    assert state["buckets"] == {"unknown": 0, "missing": 1, "first_category": 2}
    region = next(c for c in state["categorical"] if c["name"] == "region")
    assert region["categories"] == ["east", "north", "south", "west"]
    assert state["onnx_check_max_abs_diff"] <= 1e-5
    info = json.loads((work / "split" / "split.json").read_text())
    assert info["stratified_on"] == "classes"
    pos = [info["class_counts"][s][1] / info["sizes"][s] for s in ("train", "val", "test")]
    assert max(pos) - min(pos) < 0.02  # stratified: the rare class is spread evenly


def test_churn_evaluation_reports_imbalance_metrics_and_threshold(churn_run):
    work, _ = churn_run
    metrics = json.loads((work / "evaluate" / "metrics.json").read_text())
    assert {"accuracy", "balanced_accuracy", "f1", "roc_auc", "pr_auc"} <= set(metrics)
    assert metrics["roc_auc"] > 0.75  # the signal is learnable
    assert metrics["threshold"]["tuned_on"] == "val" and 0 < metrics["threshold"]["value"] < 1
    assert set(metrics["baselines"]) == {"logreg", "gboost"}
    assert any(k.startswith("dl_minus_best_baseline_") for k in metrics)
    plots = work / "evaluate" / "plots"
    assert {"confusion.csv", "roc.csv", "pr.csv", "classification.png"} <= {p.name for p in plots.iterdir()}


def test_churn_served_graph_maps_raw_rows_to_the_pipeline_predictions(churn_run):
    """The deployed ONNX (preprocessing + network) on raw test rows == the pipeline's predictions."""
    work, result = churn_run
    manifest = json.loads((work / "deploy" / "manifest.json").read_text())
    assert manifest["kind"] == "tabular" and manifest["input"]["kind"] == "records"
    assert [c["name"] for c in manifest["input"]["columns"]][:2] == ["age", "monthly_spend"]
    assert manifest["decision_threshold"] is not None and manifest["alias"] in ("champion", "challenger")
    model = onnx.load(str(work / "deploy" / "model.onnx"))
    assert {i.name for i in model.graph.input} == {c["name"] for c in manifest["input"]["columns"]}
    raw = pd.read_parquet(work / "split" / "test.parquet")
    state = json.loads((work / "split" / "preprocess.json").read_text())
    served = make_session(work / "deploy" / "model.onnx").run(None, tabular_prep.onnx_feeds(raw, state))[0]
    np.testing.assert_allclose(softmax(served), softmax(pipeline_predictions(work)), atol=1e-5)
    parity = json.loads((work / "deploy" / "parity.json").read_text())
    assert parity["passed"] and parity["label_agreement"] == 1.0


def test_unseen_category_and_missing_values_map_to_buckets(churn_run):
    work, _ = churn_run
    state = json.loads((work / "split" / "preprocess.json").read_text())
    rows = pd.DataFrame({"age": [np.nan, 40.0], "gender": [None, "F"], "region": ["atlantis", "north"],
                         "contract": ["monthly", "monthly"], "monthly_spend": [50.0, 50.0],
                         "support_calls": [1.0, 1.0], "paperless": ["Yes", "Yes"]})
    feeds = tabular_prep.onnx_feeds(rows, state)
    features = make_session(work / "split" / "preprocess.onnx").run(None, feeds)[0]
    names = state["feature_names"]
    assert features[0, names.index("region")] == 0  # unknown bucket
    assert features[0, names.index("gender")] == 1  # missing bucket
    assert features[1, names.index("region")] >= 2
    served = make_session(work / "deploy" / "model.onnx").run(None, feeds)[0]
    assert np.isfinite(served).all()


@pytest.mark.slow
def test_diabetes_regression_through_deploy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = make_params(
        data={"source": "sklearn:diabetes", "task": "auto", "target": "target"},
        model={"name": "tab_mlp", "kwargs": {}}, optim={"loss": "huber", "label_smoothing": 0.0},
        train={"epochs": 20, "batch_size": 32, "patience": 20},
        evaluate={"min_score": 0.0, "baselines": ["linear"]},
        deploy={"model_name": "diabetes-test", "build_bento": False},
    )
    result = run_pipeline(params, tmp_path)
    metrics = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    assert metrics["task"] == "regression" and {"rmse", "mae", "r2"} <= set(metrics)
    assert metrics["baselines"]["linear"]["r2"] > 0.3 and metrics["r2"] > 0.2
    assert (tmp_path / "evaluate" / "plots" / "predictions.csv").read_text().startswith("actual,predicted,residual")
    info = json.loads((tmp_path / "split" / "split.json").read_text())
    assert info["stratified_on"] == "target quantiles"
    # the served graph answers in the target's units (de-standardised inside the graph)
    raw = pd.read_parquet(tmp_path / "split" / "test.parquet")
    state = json.loads((tmp_path / "split" / "preprocess.json").read_text())
    served = make_session(tmp_path / "deploy" / "model.onnx").run(None, tabular_prep.onnx_feeds(raw, state))[0][:, 0]
    scaler = state["target"]["scaler"]
    expected = pipeline_predictions(tmp_path)[:, 0] * scaler["std"] + scaler["mean"]
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-3)
    assert result["deploy"]["alias"] in ("champion", "challenger")


def test_wrong_baseline_for_the_task_names_the_key(churn_run):
    work, _ = churn_run
    with pytest.raises(Exception, match=r"evaluate\.baselines: \['linear'\] do not apply to (tabular )?classification"):
        evaluate.run(make_params(evaluate={"baselines": ["linear"]}), work / "split", work / "train", work / "x")


@pytest.mark.slow
def test_churn_service_over_http_equals_pipeline_predictions(churn_run, tmp_path):
    """The whole path: raw test rows as JSON records -> `bentoml serve` -> the pipeline's answers."""
    import httpx

    from tests.helpers import serving

    work, _ = churn_run
    raw = pd.read_parquet(work / "split" / "test.parquet").drop(columns=["churned"])
    records = json.loads(raw.to_json(orient="records"))  # NaN/NA -> null, as a client would send
    with serving(work / "deploy", tmp_path, timeout=120) as server:
        resp = httpx.post(f"{server['url']}/predict", json={"records": records}, timeout=60)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    served = np.array([p["probabilities"] for p in body["predictions"]])
    np.testing.assert_allclose(served, softmax(pipeline_predictions(work)), atol=1e-5)
    threshold = json.loads((work / "deploy" / "manifest.json").read_text())["decision_threshold"]
    expected = np.where(served[:, 1] >= threshold, "Yes", "No")
    assert [p["label"] for p in body["predictions"]] == expected.tolist()
    assert sum(body["notes"]["missing_values"].values()) == int(raw.isna().sum().sum())


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_gboost_baseline_takes_a_column_with_more_than_255_categories(task):
    """HistGradientBoosting refuses a categorical column with more than max_bins (255) codes: such a
    column (a product name, a postcode) goes to it as an ordinal code, the others stay categorical."""
    from pipelines.plugins import get_modality, get_task

    rng = np.random.default_rng(0)
    n = 2000
    state = {"n_features": 3, "cardinalities": [302, 6]}  # column 1: 300 categories + unknown + missing
    X = np.column_stack([rng.normal(size=n), rng.integers(0, 302, n), rng.integers(0, 6, n)]).astype(np.float32)
    y = (X[:, 0] + (X[:, 2] > 2) > 0.5).astype(int) if task == "classification" else X[:, 0] + X[:, 2]
    factories = get_modality("tabular").baselines(get_task(task), Path("."), state)
    model = factories["gboost"]()
    assert list(model.categorical_features) == [2]
    assert model.fit(X, y).score(X, y) > 0.5
    linear = factories["logreg" if task == "classification" else "linear"]().fit(X, y)  # one-hot: any number
    assert linear.score(X, y) > 0.5
