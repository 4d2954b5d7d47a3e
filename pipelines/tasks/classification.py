"""Classification: class labels in, one logit per class out.

Targets are class-label texts (``"0"``, ``"yes"``); ``classes`` are their sorted distinct values and a
target is its index there. Loss: cross-entropy (class weights, label smoothing). Every model — the
network and each baseline — is scored with its own decision rule: for a binary task with
``evaluate.threshold_objective`` set, a threshold on P(classes[1]) tuned on validation for that model;
otherwise the model's own prediction (argmax for the network, ``predict()`` for an estimator).

The primary metric (``evaluate.metric: auto``) follows the class balance of the train split:
accuracy when the classes are balanced (largest/smallest count < ``IMBALANCED``), ROC-AUC for an
imbalanced binary target (threshold-free: a majority-class answer scores 0.5, not the majority share),
macro F1 for imbalanced multiclass targets (every class weighs alike).

Module-level imports are numpy only: the services import ``decide``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.files import DataError
from pipelines.plugins import Task, register_task

IMBALANCED = 1.5  # largest / smallest class count on train from which accuracy stops deciding
CURVE_POINTS = 500  # points kept in roc.csv / pr.csv
CONFUSION_ROWS = 20_000  # rows kept in confusion.csv (a seeded sample beyond that; exact counts in report.json)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def decide(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    """Class indices: argmax, or for a binary model with a tuned threshold P(classes[1]) >= threshold."""
    if threshold is not None and probs.shape[1] == 2:
        return (probs[:, 1] >= threshold).astype(np.int64)
    return probs.argmax(axis=1)


def served_threshold(manifest: dict[str, Any]) -> float | None:
    """The decision threshold a binary model was deployed with (None: argmax)."""
    classes = manifest.get("classes") or []
    return manifest.get("decision_threshold") if len(classes) == 2 else None


def threshold_candidates(p_val: np.ndarray) -> np.ndarray:
    """Every threshold worth trying: a 0.05 grid and each validation probability, clipped to [0.01, 0.99]."""
    return np.unique(np.clip(np.concatenate([np.linspace(0.05, 0.95, 19), p_val]), 0.01, 0.99))


def threshold_counts(y: np.ndarray, p: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Confusion counts of the rule ``p >= t`` for every ``t`` at once: one sort, cumulative sums, O(n log n).

    Returns int64 arrays ``tp``, ``fp``, ``fn``, ``tn`` (one entry per threshold) and the totals ``pos``/``neg``.
    """
    order = np.argsort(p, kind="stable")
    p_sorted = np.asarray(p, dtype=np.float64)[order]
    positive = np.asarray(y)[order] == 1
    below_pos = np.concatenate([[0], np.cumsum(positive, dtype=np.int64)])  # positives among the i lowest
    below = np.searchsorted(p_sorted, np.asarray(thresholds, dtype=np.float64), side="left")  # count of p < t
    pos, n = int(below_pos[-1]), len(p_sorted)
    tp = pos - below_pos[below]
    predicted = n - below
    fp = predicted - tp
    return {"tp": tp, "fp": fp, "fn": pos - tp, "tn": (n - pos) - fp, "pos": np.int64(pos), "neg": np.int64(n - pos)}


def objective_scores(counts: dict[str, np.ndarray], objective: str) -> np.ndarray:
    """``f1`` or ``balanced_accuracy`` per threshold, with scikit-learn's arithmetic (bit-identical scores,
    so ties are ties exactly as ``f1_score`` / ``balanced_accuracy_score`` would make them)."""
    tp, fp, fn, tn, pos, neg = (counts[k] for k in ("tp", "fp", "fn", "tn", "pos", "neg"))
    if objective == "f1":  # 2 tp / (true + predicted); 0 when both are empty (zero_division)
        denom = (tp + fn).astype(np.float64) + (tp + fp).astype(np.float64)
        return np.divide(2.0 * tp, denom, out=np.zeros(len(tp)), where=denom > 0)
    if objective == "balanced_accuracy":  # mean recall over the classes present in y
        recalls = [r for r, total in ((tn / max(neg, 1), neg), (tp / max(pos, 1), pos)) if total > 0]
        return recalls[0] if len(recalls) == 1 else (recalls[0] + recalls[1]) / 2
    raise KeyError(objective)


def tune_threshold(y_val: np.ndarray, p_val: np.ndarray, objective: str) -> tuple[float, float]:
    """Binary decision threshold on P(positive) that maximises ``objective`` on validation.

    Every candidate (``threshold_candidates``) is scored from one sort (``threshold_counts``); ties go
    to the threshold closest to 0.5, then to the higher one.
    """
    grid = threshold_candidates(p_val)
    scores = objective_scores(threshold_counts(y_val, p_val, grid), objective)
    best = scores == scores.max()
    closeness = np.where(best, -np.abs(grid - 0.5), -np.inf)
    i = int(np.flatnonzero(closeness == closeness.max())[-1])  # grid ascending: the last is the highest
    return float(grid[i]), float(scores[i])


def curve_points(*columns: np.ndarray, max_points: int = CURVE_POINTS) -> list[np.ndarray]:
    """At most ``max_points`` evenly spaced points of a curve (ends kept): a 200k-row test split gives
    ROC/PR curves with as many points, too many for a plot file."""
    n = len(columns[0])
    if n <= max_points:
        return list(columns)
    keep = np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))
    return [c[keep] for c in columns]


def classification_metrics(y: np.ndarray, proba: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Label metrics from ``pred``, ranking metrics from ``proba``."""
    from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score, f1_score,
                                 roc_auc_score)

    out = {"accuracy": accuracy_score(y, pred), "balanced_accuracy": balanced_accuracy_score(y, pred),
           "macro_f1": f1_score(y, pred, average="macro")}
    if proba.shape[1] == 2:
        out["f1"] = f1_score(y, pred)
        out["roc_auc"] = roc_auc_score(y, proba[:, 1])
        out["pr_auc"] = average_precision_score(y, proba[:, 1])
    elif len(np.unique(y)) == proba.shape[1]:
        out["roc_auc"] = roc_auc_score(y, proba, multi_class="ovr", average="macro")
    return {k: round(float(v), 6) for k, v in out.items()}


def one_hot(model: Any, categorical: list[int]) -> Any:
    """``model`` behind a one-hot encoding of the ``categorical`` columns (index buckets)."""
    if not categorical:
        return model
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    enc = ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"), categorical)], remainder="passthrough")
    return make_pipeline(enc, model)


@register_task
class Classification(Task):
    name = "classification"
    output_name = "logits"
    losses = ("cross_entropy",)
    default_loss = "cross_entropy"
    metrics = ("accuracy", "balanced_accuracy", "macro_f1", "f1", "roc_auc", "pr_auc")
    compares_labels = True

    # ------------------------------------------------------------ collect / split

    def target_profile(self, values: Any) -> dict[str, Any]:
        """Classes (sorted label texts), counts and imbalance of the label texts ``values``."""
        labels, counts = np.unique(np.asarray(values, dtype=str), return_counts=True)
        return {"classes": labels.tolist(), "num_classes": int(len(labels)),
                "class_balance": {str(c): int(n) for c, n in zip(labels, counts)},
                "imbalance_ratio": round(float(counts.max() / counts.min()), 3)}

    def encode_targets(self, values: Any, profile: dict[str, Any], where: str) -> np.ndarray:
        classes = profile["classes"]
        index = {c: i for i, c in enumerate(classes)}
        labels = np.asarray(values, dtype=str)
        y = np.fromiter((index.get(v, -1) for v in labels), dtype=np.int64, count=len(labels))
        if (y < 0).any():
            row = int(np.argmax(y < 0))
            raise DataError(f"{where}: row {row}, target: {labels[row]!r} is not one of the profile classes {classes}")
        return y

    def strata(self, y: np.ndarray) -> tuple[np.ndarray, str]:
        return y, "classes"

    def split_summary(self, y: np.ndarray, parts: dict[str, np.ndarray], profile: dict[str, Any]) -> dict[str, Any]:
        k = len(profile["classes"])
        return {"classes": profile["classes"],
                "class_counts": {name: np.bincount(y[rows], minlength=k).tolist() for name, rows in parts.items()}}

    # ------------------------------------------------------------ design / configure / train

    def num_outputs(self, split: dict[str, Any]) -> int:
        return len(split["classes"])

    def choose_loss(self, p: Any, y_train: np.ndarray, num_outputs: int) -> dict[str, Any]:
        from pipelines.params import ParamsError

        loss: dict[str, Any] = {"name": "cross_entropy", "class_weights": None, "label_smoothing": p.label_smoothing}
        loss["why"] = ("set in params (optim.loss)" if p.loss != "auto"
                       else "auto: cross_entropy is the maximum-likelihood loss for classification")
        if p.class_weights == "balanced":
            counts = np.bincount(y_train, minlength=num_outputs).astype(np.float64)
            if (counts == 0).any():
                raise ParamsError(f"optim.class_weights: class(es) {np.flatnonzero(counts == 0).tolist()} "
                                  "are absent from the train split")
            weights = len(y_train) / (num_outputs * counts)  # sklearn's 'balanced' formula
            loss["class_weights"] = [round(float(w), 6) for w in weights]
            loss["class_weights_why"] = "balanced: n_samples / (n_classes * count) on the train split"
        return loss

    def train_targets(self, y: np.ndarray, target_state: dict[str, Any]) -> Any:
        import torch

        return torch.as_tensor(y, dtype=torch.long)

    def step(self, out: Any, y: Any, loss_fn: Any) -> tuple[Any, dict[str, Any]]:
        return loss_fn(out, y), {"acc": (out.argmax(1) == y).float().mean()}

    # ------------------------------------------------------------ evaluate

    def network_outputs(self, raw: np.ndarray, target_state: dict[str, Any]) -> dict[str, np.ndarray]:
        proba = softmax(raw.astype(np.float64))
        return {"proba": proba, "pred": proba.argmax(1)}

    def estimator_outputs(self, estimator: Any, X: Any) -> dict[str, np.ndarray]:
        # predict() is the estimator's own rule (an SVC's Platt probabilities can disagree with it)
        return {"proba": estimator.predict_proba(X), "pred": np.asarray(estimator.predict(X), dtype=np.int64)}

    def score(self, y: dict[str, np.ndarray], out: dict[str, dict[str, np.ndarray]],
              p: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        rule: dict[str, Any] = {}
        test = out["test"]
        pred = test["pred"]
        if test["proba"].shape[1] == 2 and p.threshold_objective != "none":
            threshold, val_score = tune_threshold(y["val"], out["val"]["proba"][:, 1], p.threshold_objective)
            rule = {"value": threshold, "objective": p.threshold_objective, "val_score": round(val_score, 6),
                    "tuned_on": "val"}
            pred = decide(test["proba"], threshold)
        return classification_metrics(y["test"], test["proba"], pred), rule

    def primary_metric(self, requested: str, split: dict[str, Any]) -> tuple[str, str]:
        if requested != "auto":
            return requested, "set in params (evaluate.metric)"
        counts = np.asarray(split["class_counts"]["train"], dtype=np.float64)
        ratio = counts.max() / max(counts.min(), 1.0)
        balance = f"largest/smallest class {ratio:.2f} on the train split"
        if ratio < IMBALANCED:
            return "accuracy", f"auto: classes balanced ({balance} < {IMBALANCED})"
        if len(counts) == 2:
            return "roc_auc", (f"auto: imbalanced binary target ({balance} >= {IMBALANCED}): ROC-AUC does not "
                               "reward answering the majority class")
        return "macro_f1", f"auto: imbalanced classes ({balance} >= {IMBALANCED}): macro F1 weighs every class alike"

    def baseline_factories(self, categorical: list[int]) -> dict[str, Callable[[], Any]]:
        """scikit-learn defaults; linear/kernel/neighbour models see categories one-hot, boosting natively.
        Each factory imports its own estimator: only the baselines asked for are imported (~1 s for ensembles)."""

        def logreg() -> Any:
            from sklearn.linear_model import LogisticRegression

            return one_hot(LogisticRegression(max_iter=5000), categorical)

        def svc() -> Any:
            from sklearn.calibration import CalibratedClassifierCV
            from sklearn.svm import SVC

            # Platt-scaled probabilities, as SVC(probability=True) gave (deprecated in scikit-learn 1.9)
            return one_hot(CalibratedClassifierCV(SVC(random_state=0), ensemble=False), categorical)

        def knn() -> Any:
            from sklearn.neighbors import KNeighborsClassifier

            return one_hot(KNeighborsClassifier(), categorical)

        def gboost() -> Any:
            from sklearn.ensemble import HistGradientBoostingClassifier

            return HistGradientBoostingClassifier(random_state=0, categorical_features=categorical or None)

        return {"logreg": logreg, "svc": svc, "knn": knn, "gboost": gboost}

    def report(self, y: np.ndarray, test: dict[str, np.ndarray], rule: dict[str, Any], split: dict[str, Any],
               plots: Path) -> tuple[dict[str, Any], dict[str, list[tuple]]]:
        from sklearn.metrics import classification_report, precision_recall_curve, roc_curve
        from sklearn.preprocessing import label_binarize

        classes, proba = split["classes"], test["proba"]
        pred = decide(proba, rule.get("value"))
        report = classification_report(y, pred, labels=range(len(classes)), target_names=classes,
                                       output_dict=True, zero_division=0)
        if proba.shape[1] == 2:  # the positive class; micro-average over classes otherwise
            truth, score = y, proba[:, 1]
        else:
            truth, score = label_binarize(y, classes=range(len(classes))).ravel(), proba.ravel()
        fpr, tpr = curve_points(*roc_curve(truth, score)[:2])
        precision, recall = curve_points(*precision_recall_curve(truth, score)[:2])
        rows = np.arange(len(y))
        if len(rows) > CONFUSION_ROWS:  # DVC's confusion template counts rows: a uniform sample keeps the shares
            rows = np.sort(np.random.default_rng(0).choice(len(y), CONFUSION_ROWS, replace=False))
            report["plots_note"] = (f"confusion.csv holds a seeded uniform sample of {CONFUSION_ROWS} of the "
                                    f"{len(y)} test rows; the metrics in this report are exact")
        files = {"confusion.csv": [("actual", "predicted"), *((classes[y[i]], classes[pred[i]]) for i in rows)],
                 "roc.csv": [("fpr", "tpr"), *zip(fpr.round(6), tpr.round(6))],
                 "pr.csv": [("recall", "precision"), *zip(recall.round(6), precision.round(6))]}
        _png(y, pred, classes, fpr, tpr, recall, precision, plots / "classification.png")
        return report, files

    def worst(self, y: np.ndarray, test: dict[str, np.ndarray], rule: dict[str, Any], split: dict[str, Any],
              top: int = 25) -> list[dict[str, Any]]:
        proba, classes = test["proba"], split["classes"]
        pred = decide(proba, rule.get("value"))
        wrong = np.flatnonzero(pred != y)
        wrong = wrong[np.argsort(-proba[wrong, pred[wrong]], kind="stable")][:top]
        return [{"row": int(i), "actual": classes[y[i]], "predicted": classes[pred[i]],
                 "score": round(float(proba[i, pred[i]]), 4)} for i in wrong]

    # ------------------------------------------------------------ serve

    def prediction_fields(self, manifest: dict[str, Any]) -> dict[str, Any]:
        from pydantic import Field

        from typing import Optional

        null = "; null when the network's outputs are not finite numbers (an input far outside what it was trained on)"
        return {"label": (Optional[str], Field(description="the predicted class" + null)),
                "class_index": (Optional[int], Field(description="index of `label` in `classes`" + null)),
                "probability": (Optional[float], Field(description="probability of `label`" + null)),
                "probabilities": (Optional[list[float]], Field(description="one per class, in the order of "
                                                                           "`classes`" + null))}

    def response_fields(self, manifest: dict[str, Any]) -> dict[str, Any]:
        from typing import Optional

        from pydantic import Field

        return {"classes": (list[str], Field(description="the model's classes")),
                "decision_threshold": (Optional[float], Field(
                    description="binary: `label` is classes[1] iff its probability >= this; null: the most "
                                "probable class"))}

    def respond(self, outputs: np.ndarray, manifest: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        classes, threshold = manifest["classes"], served_threshold(manifest)
        probs = softmax(outputs.astype(np.float64))
        best = decide(probs, threshold)
        finite = np.isfinite(probs).all(axis=1).tolist()
        unknown = {"label": None, "class_index": None, "probability": None, "probabilities": None}
        rows = [{"label": classes[k], "class_index": int(k), "probability": float(p[k]), "probabilities": p.tolist()}
                if ok else unknown for k, p, ok in zip(best.tolist(), probs, finite)]
        return rows, {"classes": classes, "decision_threshold": threshold}


def _png(y: np.ndarray, pred: np.ndarray, classes: list[str], fpr: np.ndarray, tpr: np.ndarray,
         recall: np.ndarray, precision: np.ndarray, path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no backend or GUI machinery to import

    k = len(classes)
    cm = np.zeros((k, k), int)
    np.add.at(cm, (y, pred), 1)
    fig = Figure(figsize=(15, 4.8))
    axes = fig.subplots(1, 3)
    axes[0].imshow(cm, cmap="Blues")
    axes[0].set(xticks=range(k), yticks=range(k), xticklabels=classes, yticklabels=classes,
                xlabel="predicted", ylabel="actual", title="test confusion matrix")
    for (i, j), v in np.ndenumerate(cm):
        axes[0].text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black", fontsize=8)
    axes[1].plot(fpr, tpr)
    axes[1].set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    axes[2].plot(recall, precision)
    axes[2].set(xlabel="recall", ylabel="precision", title="precision-recall")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
