"""Anomaly detection: an autoencoder's reconstruction error is the anomaly score.

The autoencoder learns the train split (its normal rows only, when labels say which ones are:
``anomaly.train_on: normal``); a row's score is the sum of its per-part reconstruction errors
(tables: one part per column, so the columns that explain a flagged row are named). The flag
threshold is chosen on validation the same way for the network and every baseline: with labels the
score threshold of best F1, without labels the ``anomaly.percentile`` of the validation scores.

Labels: ``anomaly.anomaly_label`` names the target value that marks an anomaly (empty: the minority
class); every other value is normal. Metrics with labels: ROC-AUC (primary: threshold-free), PR-AUC,
precision/recall/F1 at the threshold. Without labels no metric can say which model finds anomalies
better; the primary metric is then ``flag_rate_stability`` (how closely the test flag rate follows the
validation percentile), which says only that the threshold carries over.

Baselines (scikit-learn, on the same rows): Isolation Forest, mean distance to the 5 nearest train
rows, PCA reconstruction error (95 % of the variance); categories one-hot.

Module-level imports are numpy only: the service imports ``respond``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.plugins import register_task
from pipelines.tasks.unsupervised import NO_LABEL, AutoencoderTask, errors_head, labelled

TOP_PARTS = 3  # columns named per flagged table row
CURVE_POINTS = 500


@register_task
class Anomaly(AutoencoderTask):
    name = "anomaly"
    output_name = "errors"
    route = "score"
    metrics = ("roc_auc", "pr_auc", "f1", "precision", "recall", "flag_rate_stability")

    @property
    def p(self) -> Any:
        return self.section("anomaly")

    @property
    def denoise(self) -> float:  # type: ignore[override]
        return float(self.p.denoise)

    # ------------------------------------------------------------ split: normal (0) / anomaly (1)

    def encode_targets(self, values: Any, profile: dict[str, Any], where: str) -> np.ndarray:
        from pipelines.params import ParamsError

        labels = np.asarray(values, dtype=str)
        if not profile.get("labelled"):
            return np.full(len(labels), NO_LABEL, np.int64)
        counts = profile["class_balance"]
        wanted = self.p.anomaly_label
        if wanted and wanted not in counts:
            raise ParamsError(f"anomaly.anomaly_label: {wanted!r} is not a value of the target (values: "
                              f"{', '.join(sorted(counts))})")
        anomalous = wanted or min(sorted(counts), key=lambda c: counts[c])
        return (labels == anomalous).astype(np.int64)

    def split_summary(self, y: np.ndarray, parts: dict[str, np.ndarray], profile: dict[str, Any]) -> dict[str, Any]:
        if not labelled(y):
            return {"labelled": False, "classes": None}
        counts = profile["class_balance"]
        anomalous = self.p.anomaly_label or min(sorted(counts), key=lambda c: counts[c])
        return {"labelled": True, "classes": ["normal", "anomaly"], "anomaly_label": anomalous,
                "anomaly_counts": {name: int(y[rows].sum()) for name, rows in parts.items()}}

    def train_rows(self, y: np.ndarray) -> np.ndarray | None:
        if self.p.train_on == "normal" and labelled(y):
            return np.flatnonzero(y == 0)
        return None

    # ------------------------------------------------------------ design / evaluate

    def dry_run(self, net: Any, batch: Any, split: dict[str, Any]) -> dict[str, Any]:
        import torch

        with torch.no_grad():
            checked = self._dry_run(net.errors(batch), batch, "errors(x)")
            net.encode(batch)
        checked["output"]["parts"] = self._parts(split, checked["output"]["shape"][1])
        return checked

    @staticmethod
    def _parts(split: dict[str, Any], n: int) -> list[str]:
        names = split.get("feature_names") or []
        return list(names) if len(names) == n else (["reconstruction"] if n == 1 else [f"part_{i}" for i in range(n)])

    def output_spec(self, split: dict[str, Any], rule: dict[str, Any]) -> dict[str, Any]:
        return {"name": self.output_name, "shape": [-1, len(rule["parts"])], "dtype": "float32",
                "parts": rule["parts"]}

    def head(self, net: Any, target_state: dict[str, Any]) -> Any:
        return errors_head(net)

    def prepare(self, head: Any, split_dir: Path, state: dict[str, Any], split: dict[str, Any],
                create_model: Any) -> None:
        self.split = split

    def network_outputs(self, raw: np.ndarray, target_state: dict[str, Any]) -> dict[str, np.ndarray]:
        raw = raw.astype(np.float64)
        return {"score": raw.sum(1), "parts": raw}

    def estimator_outputs(self, estimator: Any, X: Any) -> dict[str, np.ndarray]:
        return {"score": np.asarray(estimator.anomaly_score(X), np.float64)}

    def score(self, y: dict[str, np.ndarray], out: dict[str, dict[str, np.ndarray]],
              p: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        val, test = out["val"]["score"], out["test"]["score"]
        parts = self._parts(getattr(self, "split", {}), out["test"]["parts"].shape[1]) if "parts" in out["test"] else None
        if labelled(y["val"]) and labelled(y["test"]) and 0 < y["val"].sum() < len(y["val"]):
            threshold, val_f1 = best_f1_threshold(y["val"], val)
            rule = {"value": threshold, "objective": "f1", "val_score": round(val_f1, 6), "tuned_on": "val"}
            metrics = labelled_metrics(y["test"], test, threshold)
        else:
            threshold = float(np.percentile(val, self.p.percentile))
            expected = 1.0 - self.p.percentile / 100.0
            flagged = float((test >= threshold).mean())
            rule = {"value": threshold, "objective": f"percentile {self.p.percentile:g} of the validation scores",
                    "tuned_on": "val"}
            metrics = {"flagged_share": round(flagged, 6), "expected_share": round(expected, 6),
                       "flag_rate_stability": round(max(0.0, 1.0 - abs(flagged - expected) / expected), 6)}
        if parts is not None:
            rule["parts"] = parts
        return metrics, rule

    def primary_metric(self, requested: str, split: dict[str, Any]) -> tuple[str, str]:
        if requested != "auto":
            return requested, "set in params (evaluate.metric)"
        if split.get("labelled"):
            return "roc_auc", ("auto: labelled anomalies: ROC-AUC ranks every anomaly against every normal row, "
                               "free of the threshold")
        return "flag_rate_stability", ("auto: no labels, so nothing measures which model finds anomalies; this "
                                       "only checks that the validation threshold flags the expected share of test rows")

    def baseline_factories(self, categorical: list[int]) -> dict[str, Callable[[], Any]]:
        return {"isolation_forest": lambda: ScoreModel("isolation_forest", categorical),
                "knn_distance": lambda: ScoreModel("knn_distance", categorical),
                "pca_error": lambda: ScoreModel("pca_error", categorical)}

    def report(self, y: np.ndarray, test: dict[str, np.ndarray], rule: dict[str, Any], split: dict[str, Any],
               plots: Path) -> tuple[dict[str, Any], dict[str, list[tuple]]]:
        score, threshold = test["score"], rule["value"]
        flagged = score >= threshold
        report: dict[str, Any] = {"threshold": threshold, "test_rows": int(len(score)),
                                  "flagged": int(flagged.sum())}
        files: dict[str, list[tuple]] = {}
        if "parts" in test and rule.get("parts"):
            mean = test["parts"][flagged].mean(0) if flagged.any() else np.zeros(test["parts"].shape[1])
            order = np.argsort(-mean)[:10]
            report["flagged_rows_mean_error_by_part"] = {rule["parts"][i]: round(float(mean[i]), 6) for i in order}
        truth = y if labelled(y) else None
        if truth is not None and 0 < truth.sum() < len(truth):
            from sklearn.metrics import precision_recall_curve, roc_curve

            from pipelines.tasks.classification import curve_points

            report["confusion_at_threshold"] = {
                "true_anomalies_flagged": int((flagged & (truth == 1)).sum()),
                "normal_rows_flagged": int((flagged & (truth == 0)).sum()),
                "anomalies_missed": int((~flagged & (truth == 1)).sum())}
            fpr, tpr = curve_points(*roc_curve(truth, score)[:2], max_points=CURVE_POINTS)
            precision, recall = curve_points(*precision_recall_curve(truth, score)[:2], max_points=CURVE_POINTS)
            files = {"roc.csv": [("fpr", "tpr"), *zip(fpr.round(6), tpr.round(6))],
                     "pr.csv": [("recall", "precision"), *zip(recall.round(6), precision.round(6))]}
        _histogram_png(score, truth, threshold, plots / "anomaly_scores.png")
        return report, files

    # ------------------------------------------------------------ serve

    def prediction_fields(self, manifest: dict[str, Any]) -> dict[str, Any]:
        from typing import Optional

        from pydantic import BaseModel, Field

        class PartError(BaseModel):
            column: str
            error: float

        null = "; null when the network's outputs are not finite numbers"
        fields = {"score": (Optional[float], Field(description="anomaly score: the row's reconstruction error" + null)),
                  "anomaly": (Optional[bool], Field(description="score >= `threshold`" + null))}
        if len(manifest["output"].get("parts") or []) > 1:
            fields["top_columns"] = (list[PartError], Field(
                description=f"the {TOP_PARTS} columns with the largest reconstruction error, largest first: "
                            "what makes the row unusual"))
        return fields

    def response_fields(self, manifest: dict[str, Any]) -> dict[str, Any]:
        from pydantic import Field

        return {"threshold": (float, Field(description="rows scoring at least this are flagged (chosen on the "
                                                       "validation split)"))}

    def respond(self, outputs: np.ndarray, manifest: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        parts = manifest["output"].get("parts") or []
        threshold = float(manifest["rule"]["value"])
        errors = outputs.astype(np.float64)
        scores = errors.sum(1)
        rows = []
        for score, row in zip(scores.tolist(), errors):
            if not np.isfinite(score):
                rows.append({"score": None, "anomaly": None, **({"top_columns": []} if len(parts) > 1 else {})})
                continue
            item: dict[str, Any] = {"score": score, "anomaly": score >= threshold}
            if len(parts) > 1:
                top = np.argsort(-row, kind="stable")[:TOP_PARTS]
                item["top_columns"] = [{"column": parts[i], "error": float(row[i])} for i in top]
            rows.append(item)
        return rows, {"threshold": threshold}


def best_f1_threshold(y: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """The score threshold (rule ``score >= t``) with the best F1 on ``y``: every distinct score is a
    candidate, counted from one sort (O(n log n)); ties go to the higher threshold (fewer flags)."""
    from pipelines.tasks.classification import objective_scores, threshold_counts

    candidates = np.unique(score)
    scores = objective_scores(threshold_counts(y, score, candidates), "f1")
    i = int(np.flatnonzero(scores == scores.max())[-1])
    return float(candidates[i]), float(scores[i])


def labelled_metrics(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

    pred = (score >= threshold).astype(np.int64)
    out = {"roc_auc": roc_auc_score(y, score), "pr_auc": average_precision_score(y, score),
           "f1": f1_score(y, pred, zero_division=0), "precision": precision_score(y, pred, zero_division=0),
           "recall": recall_score(y, pred, zero_division=0), "flagged_share": pred.mean()}
    return {k: round(float(v), 6) for k, v in out.items()}


class ScoreModel:
    """A scikit-learn anomaly scorer over the baselines' flat inputs: ``fit(X, y)`` (``y`` ignored),
    ``anomaly_score(X)`` (higher = more anomalous). Categories one-hot, numbers as they are
    (standardised by the modality)."""

    def __init__(self, kind: str, categorical: list[int]) -> None:
        self.kind, self.categorical = kind, categorical
        self.encoder: Any = None

    def _encode(self, X: Any) -> np.ndarray:
        X = np.asarray(X, np.float64)
        if self.encoder is None:
            return X
        Z = self.encoder.transform(X)
        return np.asarray(Z.toarray() if hasattr(Z, "toarray") else Z, np.float64)

    def fit(self, X: Any, y: Any = None) -> ScoreModel:
        X = np.asarray(X, np.float64)
        if self.categorical:
            from sklearn.compose import ColumnTransformer
            from sklearn.preprocessing import OneHotEncoder

            self.encoder = ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"), self.categorical)],
                                             remainder="passthrough").fit(X)
        Z = self._encode(X)
        if self.kind == "isolation_forest":
            from sklearn.ensemble import IsolationForest

            self.model = IsolationForest(random_state=0).fit(Z)
        elif self.kind == "knn_distance":
            from sklearn.neighbors import NearestNeighbors

            self.model = NearestNeighbors(n_neighbors=min(5, len(Z))).fit(Z)
        else:
            from sklearn.decomposition import PCA

            self.model = PCA(n_components=0.95, svd_solver="full").fit(Z)
        return self

    def anomaly_score(self, X: Any) -> np.ndarray:
        Z = self._encode(X)
        if self.kind == "isolation_forest":
            return -self.model.score_samples(Z)
        if self.kind == "knn_distance":
            return self.model.kneighbors(Z)[0].mean(1)
        back = self.model.inverse_transform(self.model.transform(Z))
        return ((Z - back) ** 2).sum(1)


def _histogram_png(score: np.ndarray, truth: np.ndarray | None, threshold: float, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    bins = np.histogram_bin_edges(score, bins=50)
    if truth is None:
        ax.hist(score, bins=bins, color="tab:blue", label="test rows")
    else:
        ax.hist(score[truth == 0], bins=bins, color="tab:blue", alpha=0.7, label="normal")
        ax.hist(score[truth == 1], bins=bins, color="tab:red", alpha=0.7, label="anomaly")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3g}")
    ax.set(xlabel="anomaly score (reconstruction error)", ylabel="test rows", yscale="log",
           title="anomaly scores on the test split")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
