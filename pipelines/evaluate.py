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
from pipelines.data import load_split
from pipelines.files import DataError, read_json, staged_outputs, write_json
from pipelines.params import Params, section_dict

log = logging.getLogger(__name__)


def load_network(checkpoint: Path) -> Any:
    """Rebuild the plain ``nn.Module`` from a checkpoint that carries arch + kwargs (no pickles)."""
    import torch

    from models.registry import create_model

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    net = create_model(ckpt["arch"], ckpt["input_shape"], ckpt["num_outputs"], **ckpt["kwargs"])
    net.load_state_dict(ckpt["state_dict"])
    return net.eval()


def predict_logits(net: Any, X: np.ndarray, batch_size: int = 512) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.concatenate([net(torch.from_numpy(X[i:i + batch_size])).numpy() for i in range(0, len(X), batch_size)])


def classification_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": round(float(accuracy_score(y, pred)), 6),
            "macro_f1": round(float(f1_score(y, pred, average="macro")), 6)}


def _baseline(name: str) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC

    return {
        "logreg": lambda: LogisticRegression(max_iter=5000),
        "svc": lambda: SVC(),
        "knn": lambda: KNeighborsClassifier(),
        "gboost": lambda: HistGradientBoostingClassifier(random_state=0),
    }[name]()


def run_baselines(names: tuple[str, ...], split_dir: Path, X_test: np.ndarray, y_test: np.ndarray) -> dict[str, Any]:
    """Fit each scikit-learn baseline (default settings) on the same train split, score on test."""
    X_train, y_train = load_split(split_dir, "train")
    flat_train, flat_test = X_train.reshape(len(X_train), -1), X_test.reshape(len(X_test), -1)
    results = {}
    for name in names:
        started = time.perf_counter()
        model = _baseline(name).fit(flat_train, y_train)
        results[name] = {**classification_metrics(y_test, model.predict(flat_test)),
                         "fit_seconds": round(time.perf_counter() - started, 3)}
    return results


def confusion_png(cm: np.ndarray, classes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(cm, cmap="Blues")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="actual", title="test confusion matrix")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(params: Params, split_dir: Path, train_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Score the trained model and the baselines on the test split; write metrics, plots, gate."""
    from sklearn.metrics import classification_report, confusion_matrix

    split_dir, train_dir = Path(split_dir), Path(train_dir)
    split = read_json(split_dir / "split.json")
    if split["task"] != "classification":
        raise DataError(f"{split_dir / 'split.json'}: evaluate supports classification so far, got {split['task']!r}")
    run_info = read_json(train_dir / "run.json")
    X_test, y_test = load_split(split_dir, "test")
    logits = predict_logits(load_network(train_dir / "model.pt"), X_test)
    pred = logits.argmax(1)
    classes = split["classes"]
    metrics: dict[str, Any] = classification_metrics(y_test, pred)
    metrics["test_rows"] = int(len(y_test))
    metrics["fit_seconds"] = run_info["fit_seconds"]  # beside the baselines' own, for "is it worth it?"
    metrics["baselines"] = run_baselines(params.evaluate.baselines, split_dir, X_test, y_test)
    best_name = max(metrics["baselines"], key=lambda n: metrics["baselines"][n]["accuracy"], default=None)
    if best_name:
        metrics["best_baseline"] = best_name
        metrics["dl_minus_best_baseline"] = round(metrics["accuracy"] - metrics["baselines"][best_name]["accuracy"], 6)
    threshold = params.evaluate.min_accuracy
    passed = metrics["accuracy"] >= threshold
    gate = {"passed": passed, "metric": "accuracy", "value": metrics["accuracy"], "threshold": threshold,
            "reason": f"test accuracy {metrics['accuracy']:.4f} {'>=' if passed else '<'} evaluate.min_accuracy {threshold}",
            "run_id": run_info["run_id"], "params": section_dict(params.evaluate)}
    report = classification_report(y_test, pred, labels=range(len(classes)), target_names=classes,
                                   output_dict=True, zero_division=0)
    cm = confusion_matrix(y_test, pred, labels=range(len(classes)))
    with staged_outputs(out_dir) as tmp:
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "report.json", report)
        write_json(tmp / "gate.json", gate)
        with open(tmp / "confusion.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["actual", "predicted"])
            writer.writerows((classes[a], classes[b]) for a, b in zip(y_test, pred))
        confusion_png(cm, classes, tmp / "confusion.png")
        _log_to_mlflow(run_info["run_id"], metrics, gate, tmp)
    log.info("test accuracy %.4f, macro-F1 %.4f; best baseline %s %.4f; gate %s",
             metrics["accuracy"], metrics["macro_f1"], best_name,
             metrics["baselines"][best_name]["accuracy"] if best_name else float("nan"), "PASS" if passed else "FAIL")
    return {"accuracy": metrics["accuracy"], "gate": passed}


def _log_to_mlflow(run_id: str, metrics: dict[str, Any], gate: dict[str, Any], files: Path) -> None:
    """Add test metrics, baselines, plots and the gate to the training run."""
    from mlflow.entities import Metric, RunTag

    client = tracking.get_client()
    now = int(time.time() * 1000)
    values = {f"test_{k}": metrics[k] for k in ("accuracy", "macro_f1")}
    for name, res in metrics["baselines"].items():
        values.update({f"baseline_{name}_{k}": res[k] for k in ("accuracy", "macro_f1")})
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in values.items()],
                     tags=[RunTag("gate", "pass" if gate["passed"] else "fail"), RunTag("gate.reason", gate["reason"]),
                           # tags, not params: evaluate re-runs on the same training run when only
                           # the evaluate section changes, and MLflow params cannot change value
                           *(RunTag(f"evaluate.{k}", str(v)) for k, v in gate["params"].items())],
                     synchronous=True)
    for name in ("metrics.json", "report.json", "gate.json", "confusion.png"):
        client.log_artifact(run_id, str(files / name), artifact_path="evaluate")


def main() -> None:
    step_main(run, ["split_dir", "train_dir", "out_dir"])


if __name__ == "__main__":
    main()
