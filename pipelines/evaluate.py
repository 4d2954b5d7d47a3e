"""Step 6 — evaluate: test metrics, traditional-ML baselines on the same split, plots, the gate."""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipelines import tracking
from pipelines.cli import step_main
from pipelines.data import load_split, target_scaler
from pipelines.files import read_json, staged_outputs, write_json
from pipelines.params import EvaluateParams, Params, ParamsError, section_dict

log = logging.getLogger(__name__)

BASELINES = {"classification": ("logreg", "svc", "knn", "gboost"), "regression": ("linear", "knn", "gboost"),
             "text": ("tfidf_logreg",)}


def load_network(checkpoint: Path) -> Any:
    """Rebuild the plain ``nn.Module`` from a checkpoint that carries arch + kwargs (no pickles)."""
    import torch

    from models.registry import create_model

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    net = create_model(ckpt["arch"], ckpt["input_shape"], ckpt["num_outputs"], data_args=ckpt.get("data_args"),
                       **ckpt["kwargs"])
    net.load_state_dict(ckpt["state_dict"])
    return net.eval()


def predict_outputs(net: Any, X: np.ndarray, batch_size: int = 512) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.concatenate([net(torch.from_numpy(X[i:i + batch_size])).numpy() for i in range(0, len(X), batch_size)])


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def tune_threshold(y_val: np.ndarray, p_val: np.ndarray, objective: str) -> tuple[float, float]:
    """Binary decision threshold on P(positive) that maximises ``objective`` on validation."""
    from sklearn.metrics import balanced_accuracy_score, f1_score

    score = {"f1": f1_score, "balanced_accuracy": balanced_accuracy_score}[objective]
    grid = np.unique(np.clip(np.concatenate([np.linspace(0.05, 0.95, 19), p_val]), 0.01, 0.99))
    results = [(float(score(y_val, (p_val >= t).astype(int))), -abs(t - 0.5), float(t)) for t in grid]
    best = max(results)  # best score; ties -> closest to 0.5
    return best[2], best[0]


def classification_metrics(y: np.ndarray, proba: np.ndarray, threshold: float | None = None,
                           pred: np.ndarray | None = None) -> dict[str, float]:
    """Label metrics from ``pred`` (default: argmax, or the binary threshold), ranking metrics from ``proba``."""
    from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score, f1_score,
                                 roc_auc_score)

    if pred is None:
        pred = predict_labels(proba, threshold)
    out = {"accuracy": accuracy_score(y, pred), "balanced_accuracy": balanced_accuracy_score(y, pred),
           "macro_f1": f1_score(y, pred, average="macro")}
    if proba.shape[1] == 2:
        out["f1"] = f1_score(y, pred)
        out["roc_auc"] = roc_auc_score(y, proba[:, 1])
        out["pr_auc"] = average_precision_score(y, proba[:, 1])
    elif len(np.unique(y)) == proba.shape[1]:
        out["roc_auc"] = roc_auc_score(y, proba, multi_class="ovr", average="macro")
    return {k: round(float(v), 6) for k, v in out.items()}


def predict_labels(proba: np.ndarray, threshold: float | None) -> np.ndarray:
    if threshold is not None and proba.shape[1] == 2:
        return (proba[:, 1] >= threshold).astype(np.int64)
    return proba.argmax(1)


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    return {"rmse": round(float(np.sqrt(mean_squared_error(y, pred))), 6),
            "mae": round(float(mean_absolute_error(y, pred)), 6), "r2": round(float(r2_score(y, pred)), 6)}


def _baseline(name: str, task: str, categorical: list[int]) -> Any:
    """scikit-learn defaults; logistic/linear models see categories one-hot, gradient boosting natively."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder
    from sklearn.svm import SVC

    def one_hot(model: Any) -> Any:
        if not categorical:
            return model
        enc = ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"), categorical)], remainder="passthrough")
        return make_pipeline(enc, model)

    cat = categorical or None
    return {
        ("classification", "logreg"): lambda: one_hot(LogisticRegression(max_iter=5000)),
        ("classification", "svc"): lambda: one_hot(SVC(probability=True, random_state=0)),
        ("classification", "knn"): lambda: one_hot(KNeighborsClassifier()),
        ("classification", "gboost"): lambda: HistGradientBoostingClassifier(random_state=0, categorical_features=cat),
        ("regression", "linear"): lambda: one_hot(LinearRegression()),
        ("regression", "knn"): lambda: one_hot(KNeighborsRegressor()),
        ("regression", "gboost"): lambda: HistGradientBoostingRegressor(random_state=0, categorical_features=cat),
    }[(task, name)]()


def text_baseline(split_dir: Path) -> tuple[Any, Any, Any]:
    """TF-IDF (unigrams + bigrams of the fitted tokenizer's own pre-tokens: words, and single
    characters for CJK text) + logistic regression on the raw train texts."""
    import pandas as pd
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from serving.text_encode import load_tokenizer

    tok = load_tokenizer(split_dir / "tokenizer.json")

    def analyze(text: str) -> list[str]:
        norm = tok.normalizer.normalize_str(text) if tok.normalizer else text
        words = [w for w, _ in tok.pre_tokenizer.pre_tokenize_str(norm)]
        return words + [f"{a} {b}" for a, b in zip(words, words[1:])]

    train, test = (pd.read_parquet(split_dir / f"{n}.parquet") for n in ("train", "test"))
    model = make_pipeline(TfidfVectorizer(analyzer=analyze, sublinear_tf=True), LogisticRegression(max_iter=5000))
    return model, train["text"].tolist(), test["text"].tolist()


def run_baselines(p: EvaluateParams, task: str, split_dir: Path, X_test: np.ndarray, y_test: np.ndarray,
                  categorical: list[int], threshold: float | None, text: bool = False) -> dict[str, Any]:
    """Fit each baseline on the same train split and preprocessing, score it on the same test rows."""
    X_train, y_train = load_split(split_dir, "train")
    if text:  # the same split's raw texts
        results = {}
        for name in p.baselines:
            started = time.perf_counter()
            model, train_texts, test_texts = text_baseline(split_dir)
            model.fit(train_texts, y_train)
            proba = model.predict_proba(test_texts)
            pred = None if threshold is not None and proba.shape[1] == 2 else model.predict(test_texts)
            results[name] = {**classification_metrics(y_test, proba, threshold, pred),
                             "fit_seconds": round(time.perf_counter() - started, 3)}
        return results
    flat_train, flat_test = X_train.reshape(len(X_train), -1), X_test.reshape(len(X_test), -1)
    results = {}
    for name in p.baselines:
        started = time.perf_counter()
        model = _baseline(name, task, categorical).fit(flat_train, y_train)
        if task == "classification":
            proba = model.predict_proba(flat_test)
            # a binary task: the network's tuned threshold applies to the baseline's probabilities too;
            # otherwise the baseline's own predict() (an SVC's Platt probabilities can disagree with it)
            pred = None if threshold is not None and proba.shape[1] == 2 else model.predict(flat_test)
            metrics = classification_metrics(y_test, proba, threshold, pred)
        else:
            metrics = regression_metrics(y_test, model.predict(flat_test))
        results[name] = {**metrics, "fit_seconds": round(time.perf_counter() - started, 3)}
    return results


def _check_params(p: EvaluateParams, task: str, kind: str) -> None:
    family = "text" if kind == "text" else task
    wrong = [b for b in p.baselines if b not in BASELINES[family]]
    if wrong:
        raise ParamsError(f"evaluate.baselines: {wrong} do not apply to {family} (valid: {', '.join(BASELINES[family])})")


def _gate(p: EvaluateParams, task: str, metrics: dict[str, Any]) -> dict[str, Any]:
    metric, threshold = ("accuracy", p.min_accuracy) if task == "classification" else ("r2", p.min_r2)
    value = metrics[metric]
    passed = value >= threshold
    key = "min_accuracy" if task == "classification" else "min_r2"
    return {"passed": passed, "metric": metric, "value": value, "threshold": threshold,
            "reason": f"test {metric} {value:.4f} {'>=' if passed else '<'} evaluate.{key} {threshold}"}


def run(params: Params, split_dir: Path, train_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Score the trained model and the baselines on the test split; write metrics, plots, gate."""
    p = params.evaluate
    split_dir, train_dir = Path(split_dir), Path(train_dir)
    split = read_json(split_dir / "split.json")
    preprocess = read_json(split_dir / "preprocess.json")
    task, kind = split["task"], split["kind"]
    _check_params(p, task, kind)
    run_info = read_json(train_dir / "run.json")
    net = load_network(train_dir / "model.pt")
    X_test, y_test = load_split(split_dir, "test")
    n_cat = len(preprocess.get("cardinalities", []))
    categorical = list(range(X_test.shape[1] - n_cat, X_test.shape[1])) if n_cat else []
    metrics: dict[str, Any] = {"task": task, "test_rows": int(len(y_test))}
    files: dict[str, Any] = {}
    threshold = None
    if task == "classification":
        proba = _softmax(predict_outputs(net, X_test))
        if proba.shape[1] == 2 and p.threshold_objective != "none":
            X_val, y_val = load_split(split_dir, "val")
            threshold, val_score = tune_threshold(y_val, _softmax(predict_outputs(net, X_val))[:, 1], p.threshold_objective)
            metrics["threshold"] = {"value": threshold, "objective": p.threshold_objective, "val_score": round(val_score, 6),
                                    "tuned_on": "val"}
        metrics.update(classification_metrics(y_test, proba, threshold))
        files = _classification_files(y_test, proba, threshold, split["classes"])
        if kind == "text":
            files["confidently_wrong.csv"] = _confidently_wrong(split_dir, y_test, proba, threshold, split["classes"])
    else:
        scaler = target_scaler(split_dir)
        pred = predict_outputs(net, X_test)[:, 0] * scaler["std"] + scaler["mean"]
        metrics.update(regression_metrics(y_test, pred))
        files = {"predictions.csv": [("actual", "predicted", "residual"),
                                     *((float(a), float(b), float(a - b)) for a, b in zip(y_test, pred))]}
    metrics["fit_seconds"] = run_info["fit_seconds"]  # beside the baselines' own, for "is it worth it?"
    metrics["baselines"] = run_baselines(p, task, split_dir, X_test, y_test, categorical, threshold,
                                         text=kind == "text")
    _compare(metrics, task)
    gate = {**_gate(p, task, metrics), "decision_threshold": threshold, "run_id": run_info["run_id"],
            "params": section_dict(p)}
    with staged_outputs(out_dir) as tmp:
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "gate.json", gate)
        write_json(tmp / "report.json", files.pop("report", {}))
        plots = tmp / "plots"
        plots.mkdir()
        for name, rows in files.items():
            with open(plots / name, "w", newline="") as fh:
                csv.writer(fh).writerows(rows)
        _pngs(task, files, split.get("classes"), plots)
        _log_to_mlflow(run_info["run_id"], metrics, gate, tmp)
    log.info("test %s; best baseline %s; gate %s", {k: metrics[k] for k in _headline(task)},
             metrics.get("best_baseline"), "PASS" if gate["passed"] else "FAIL")
    return {gate["metric"]: gate["value"], "gate": gate["passed"]}


def _headline(task: str) -> tuple[str, ...]:
    return ("accuracy", "macro_f1") if task == "classification" else ("rmse", "r2")


def _compare(metrics: dict[str, Any], task: str) -> None:
    """Name the best baseline and the network's margin over it (negative: the baseline wins)."""
    key = "accuracy" if task == "classification" else "r2"
    if metrics["baselines"]:
        best = max(metrics["baselines"], key=lambda n: metrics["baselines"][n][key])
        metrics["best_baseline"] = best
        metrics[f"dl_minus_best_baseline_{key}"] = round(metrics[key] - metrics["baselines"][best][key], 6)


def _classification_files(y: np.ndarray, proba: np.ndarray, threshold: float | None, classes: list[str]) -> dict:
    from sklearn.metrics import classification_report, precision_recall_curve, roc_curve
    from sklearn.preprocessing import label_binarize

    pred = predict_labels(proba, threshold)
    report = classification_report(y, pred, labels=range(len(classes)), target_names=classes,
                                   output_dict=True, zero_division=0)
    if proba.shape[1] == 2:  # the positive class; micro-average over classes otherwise
        truth, score = y, proba[:, 1]
    else:
        truth, score = label_binarize(y, classes=range(len(classes))).ravel(), proba.ravel()
    fpr, tpr, _ = roc_curve(truth, score)
    precision, recall, _ = precision_recall_curve(truth, score)
    return {"report": report,
            "confusion.csv": [("actual", "predicted"), *((classes[a], classes[b]) for a, b in zip(y, pred))],
            "roc.csv": [("fpr", "tpr"), *zip(fpr.round(6), tpr.round(6))],
            "pr.csv": [("recall", "precision"), *zip(recall.round(6), precision.round(6))]}


def _confidently_wrong(split_dir: Path, y: np.ndarray, proba: np.ndarray, threshold: float | None,
                       classes: list[str], top: int = 25) -> list[tuple]:
    """The test texts the model got wrong with the most confidence: where to look first."""
    import pandas as pd

    texts = pd.read_parquet(split_dir / "test.parquet")["text"].tolist()
    pred = predict_labels(proba, threshold)
    wrong = np.flatnonzero(pred != y)
    wrong = wrong[np.argsort(-proba[wrong, pred[wrong]])][:top]
    return [("text", "label", "predicted", "confidence"),
            *((texts[i], classes[y[i]], classes[pred[i]], round(float(proba[i, pred[i]]), 4)) for i in wrong)]


def _pngs(task: str, files: dict[str, Any], classes: list[str] | None, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def rows(name: str) -> np.ndarray:
        return np.array(files[name][1:], dtype=object)

    if task == "classification":
        confusion = rows("confusion.csv")
        index = {c: i for i, c in enumerate(classes)}
        cm = np.zeros((len(classes), len(classes)), int)
        for a, b in confusion:
            cm[index[a], index[b]] += 1
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
        axes[0].imshow(cm, cmap="Blues")
        axes[0].set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
                    xlabel="predicted", ylabel="actual", title="test confusion matrix")
        for (i, j), v in np.ndenumerate(cm):
            axes[0].text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black", fontsize=8)
        roc, pr = rows("roc.csv").astype(float), rows("pr.csv").astype(float)
        axes[1].plot(roc[:, 0], roc[:, 1])
        axes[1].set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
        axes[2].plot(pr[:, 0], pr[:, 1])
        axes[2].set(xlabel="recall", ylabel="precision", title="precision-recall")
        name = "classification.png"
    else:
        pred = rows("predictions.csv").astype(float)
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
        axes[0].scatter(pred[:, 0], pred[:, 1], s=8)
        lims = [pred[:, :2].min(), pred[:, :2].max()]
        axes[0].plot(lims, lims, "k--", lw=1)
        axes[0].set(xlabel="actual", ylabel="predicted", title="predicted vs actual")
        axes[1].scatter(pred[:, 1], pred[:, 2], s=8)
        axes[1].axhline(0, color="k", lw=1)
        axes[1].set(xlabel="predicted", ylabel="residual", title="residuals")
        name = "regression.png"
    fig.tight_layout()
    fig.savefig(out / name, dpi=100)
    plt.close(fig)


def _log_to_mlflow(run_id: str, metrics: dict[str, Any], gate: dict[str, Any], files: Path) -> None:
    """Add test metrics, baselines, plots and the gate to the training run."""
    from mlflow.entities import Metric, RunTag

    client = tracking.get_client()
    now = int(time.time() * 1000)
    flat = {f"test_{k}": v for k, v in metrics.items() if isinstance(v, float) and k != "fit_seconds"}
    for name, res in metrics["baselines"].items():
        flat.update({f"baseline_{name}_{k}": v for k, v in res.items() if k != "fit_seconds"})
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in flat.items()],
                     tags=[RunTag("gate", "pass" if gate["passed"] else "fail"), RunTag("gate.reason", gate["reason"]),
                           # tags, not params: evaluate re-runs on the same training run when only
                           # the evaluate section changes, and MLflow params cannot change value
                           *(RunTag(f"evaluate.{k}", str(v)) for k, v in gate["params"].items())],
                     synchronous=True)
    for name in ("metrics.json", "report.json", "gate.json"):
        client.log_artifact(run_id, str(files / name), artifact_path="evaluate")
    client.log_artifacts(run_id, str(files / "plots"), artifact_path="evaluate/plots")


def main() -> None:
    step_main(run, ["split_dir", "train_dir", "out_dir"])


if __name__ == "__main__":
    main()
