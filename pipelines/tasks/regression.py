"""Regression: one number per row.

The network learns the target standardised with the train split's mean/std (``fit_targets``); the
exported graph answers in the target's own units (``export_head``), and parity is measured in
target standard deviations so that ``deploy.parity_atol`` means the same at any unit. Split
stratifies on target quantile bins. The primary metric is R².
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.files import DataError
from pipelines.plugins import Task, register_task
from pipelines.tasks.classification import one_hot

QUANTILE_BINS = 5


@register_task
class Regression(Task):
    target_kind = "numbers"
    name = "regression"
    output_name = "prediction"
    losses = ("mse", "huber")
    default_loss = "mse"
    metrics = ("r2",)

    # ------------------------------------------------------------ collect / split

    def target_profile(self, values: Any) -> dict[str, Any]:
        y = np.asarray(values, dtype=np.float64)
        return {"target_stats": {"mean": float(y.mean()), "std": float(y.std()), "min": float(y.min()),
                                 "max": float(y.max())}}

    def encode_targets(self, values: Any, profile: dict[str, Any], where: str) -> np.ndarray:
        y = np.asarray(values, dtype=np.float64)
        bad = ~np.isfinite(y)
        if bad.any():
            raise DataError(f"{where}: row {int(np.argmax(bad))}, target: non-finite value {y[bad][0]}")
        return y.astype(np.float32)

    def strata(self, y: np.ndarray) -> tuple[np.ndarray, str]:
        import pandas as pd

        bins = min(QUANTILE_BINS, max(1, len(y) // 10))
        return pd.qcut(y, q=bins, labels=False, duplicates="drop").astype(np.int64), "target quantiles"

    def fit_targets(self, y_train: np.ndarray) -> dict[str, Any]:
        return {"scaler": {"mean": float(y_train.mean()), "std": float(y_train.std()) or 1.0}}

    # ------------------------------------------------------------ design / configure / train

    def num_outputs(self, split: dict[str, Any]) -> int:
        return 1

    def choose_loss(self, p: Any, y_train: np.ndarray, num_outputs: int) -> dict[str, Any]:
        from pipelines.params import ParamsError

        if p.class_weights != "none":
            raise ParamsError("optim.class_weights: only applies to classification")
        name = self.default_loss if p.loss == "auto" else p.loss
        why = ("set in params (optim.loss)" if p.loss != "auto"
               else "auto: mse is the maximum-likelihood loss for regression")
        return {"name": name, "why": why, "class_weights": None}

    def train_targets(self, y: np.ndarray, target_state: dict[str, Any]) -> Any:
        import torch

        scaler = target_state["scaler"]
        return torch.as_tensor((y - scaler["mean"]) / scaler["std"], dtype=torch.float32)

    def step(self, out: Any, y: Any, loss_fn: Any) -> tuple[Any, dict[str, Any]]:
        out = out.squeeze(-1)
        return loss_fn(out, y), {"mae": (out - y).abs().mean()}

    # ------------------------------------------------------------ evaluate

    def network_outputs(self, raw: np.ndarray, target_state: dict[str, Any]) -> dict[str, np.ndarray]:
        scaler = target_state["scaler"]
        return {"pred": raw[:, 0].astype(np.float64) * scaler["std"] + scaler["mean"]}

    def estimator_outputs(self, estimator: Any, X: Any) -> dict[str, np.ndarray]:
        return {"pred": np.asarray(estimator.predict(X), dtype=np.float64)}

    def score(self, y: dict[str, np.ndarray], out: dict[str, dict[str, np.ndarray]],
              p: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

        y_test, pred = y["test"], out["test"]["pred"]
        return {"rmse": round(float(np.sqrt(mean_squared_error(y_test, pred))), 6),
                "mae": round(float(mean_absolute_error(y_test, pred)), 6),
                "r2": round(float(r2_score(y_test, pred)), 6)}, {}

    def primary_metric(self, requested: str, split: dict[str, Any]) -> tuple[str, str]:
        if requested != "auto":
            return requested, "set in params (evaluate.metric)"
        return "r2", "auto: R² (share of the target's variance explained) for regression"

    def baseline_factories(self, categorical: list[int]) -> dict[str, Callable[[], Any]]:
        from sklearn.ensemble import HistGradientBoostingRegressor
        from sklearn.linear_model import LinearRegression
        from sklearn.neighbors import KNeighborsRegressor

        return {
            "linear": lambda: one_hot(LinearRegression(), categorical),
            "knn": lambda: one_hot(KNeighborsRegressor(), categorical),
            "gboost": lambda: HistGradientBoostingRegressor(random_state=0, categorical_features=categorical or None),
        }

    def report(self, y: np.ndarray, test: dict[str, np.ndarray], rule: dict[str, Any], split: dict[str, Any],
               plots: Path) -> tuple[dict[str, Any], dict[str, list[tuple]]]:
        pred = test["pred"]
        _png(y, pred, plots / "regression.png")
        rows = [("actual", "predicted", "residual"), *((float(a), float(b), float(a - b)) for a, b in zip(y, pred))]
        return {}, {"predictions.csv": rows}  # evaluate writes the other tasks' plot files header-only

    def worst(self, y: np.ndarray, test: dict[str, np.ndarray], rule: dict[str, Any], split: dict[str, Any],
              top: int = 25) -> list[dict[str, Any]]:
        err = np.abs(test["pred"] - y)
        return [{"row": int(i), "actual": float(y[i]), "predicted": round(float(test["pred"][i]), 6),
                 "score": round(float(err[i]), 6)} for i in np.argsort(-err, kind="stable")[:top]]

    # ------------------------------------------------------------ deploy

    def export_head(self, net: Any, target_state: dict[str, Any]) -> Any:
        from pipelines.export import TargetScale

        scaler = target_state["scaler"]
        return TargetScale(net, scaler["mean"], scaler["std"]).eval()

    def parity_scale(self, target_state: dict[str, Any]) -> float:
        return float(target_state["scaler"]["std"])


    # ------------------------------------------------------------ serve

    def prediction_fields(self, manifest: dict[str, Any]) -> dict[str, Any]:
        from pydantic import Field

        from typing import Optional

        return {"value": (Optional[float], Field(description="the predicted target, in its own units; null when "
                                                             "the network's output is not a finite number (an "
                                                             "input far outside what it was trained on)"))}

    def respond(self, outputs: np.ndarray, manifest: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        values = outputs.reshape(len(outputs), -1)[:, 0].astype(np.float64)
        return [{"value": float(v) if np.isfinite(v) else None} for v in values.tolist()], {}


def _png(y: np.ndarray, pred: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    axes[0].scatter(y, pred, s=8)
    lims = [min(y.min(), pred.min()), max(y.max(), pred.max())]
    axes[0].plot(lims, lims, "k--", lw=1)
    axes[0].set(xlabel="actual", ylabel="predicted", title="predicted vs actual")
    axes[1].scatter(pred, y - pred, s=8)
    axes[1].axhline(0, color="k", lw=1)
    axes[1].set(xlabel="predicted", ylabel="residual", title="residuals")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
