"""Step 6 — evaluate: test metrics, traditional-ML baselines on the same split, plots, the gate.

Fair by construction: the network and every baseline go through the task's ``score`` with the same
decision rule (a binary threshold is tuned on validation for each model alone, never borrowed), and
one **primary metric** decides the verdict ("is deep learning worth it here?"), the gate and, in
deploy, the champion. ``evaluate.metric: auto`` lets the task pick it from the data (e.g. ROC-AUC for
an imbalanced binary target); metrics.json says which metric decided and why.
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipelines import tracking
from pipelines.cli import step_main
from pipelines.data import load_split, preprocess_state
from pipelines.files import failpoint, load_arrays, read_json, staged_outputs, write_json
from pipelines.params import EvaluateParams, Params, ParamsError, section_dict
from pipelines.plugins import SPLITS, TRAIN_OUTPUTS, Modality, Task, get_modality, get_task

log = logging.getLogger(__name__)

# Baselines fit on at most this many train rows (a seeded sample; val/test stay complete): gradient
# boosting on 650k rows takes ~40 s on 2 cores and gains next to nothing over 250k.
BASELINE_MAX_TRAIN_ROWS = 250_000

# Every CSV file that dvc.yaml plots from artifacts/evaluate/plots, with its header: a task writes the
# ones that apply to it, evaluate writes the rest with the header alone (a file with no rows draws
# nothing and raises no warning, where a missing file would).
PLOT_HEADERS = {"confusion.csv": ("actual", "predicted"), "roc.csv": ("fpr", "tpr"),
                "pr.csv": ("recall", "precision"), "predictions.csv": ("actual", "predicted"),
                "embedding.csv": ("pc1", "pc2", "group")}


def load_network(checkpoint: Path) -> Any:
    """Rebuild the plain ``nn.Module`` from a checkpoint (``models.registry.load_network``: torch on call)."""
    from models.registry import load_network as load

    return load(checkpoint)


def _create_model(*args: Any, **kwargs: Any) -> Any:
    from models.registry import create_model  # torch: only a task that builds a model (a judge) pays for it

    return create_model(*args, **kwargs)


def scored_outputs(task: Task, split_dir: Path, train_dir: Path, state: dict[str, Any], split: dict[str, Any],
                   splits: tuple[str, ...] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """The network's outputs on ``splits`` (default: the task's scored splits), after ``task.prepare``:
    read from train's outputs.npz when the task lets train compute them (no torch import here: ~2 s),
    else by running the network from its checkpoint."""
    splits = splits or task.scored_splits
    if task.outputs_in_train:
        raw = load_arrays(train_dir / TRAIN_OUTPUTS, *splits)
        task.prepare(None, split_dir, state, split, _create_model)
        return {s: task.network_outputs(raw[s], state["target"]) for s in splits}
    net = task.head(load_network(train_dir / "model.pt"), state["target"])
    task.prepare(net, split_dir, state, split, _create_model)
    return {s: task.outputs(net, lambda name: load_split(split_dir, name)[0], s, state) for s in splits}


def check_params(p: EvaluateParams, modality: Modality, task: Task, factories: dict[str, Any],
                 split: dict[str, Any]) -> tuple[str, str]:
    """Refuse baselines or a metric that do not apply, before any work; return the primary metric + why."""
    wrong = [b for b in p.baselines if b not in factories]
    if wrong:
        raise ParamsError(f"evaluate.baselines: {wrong} do not apply to {modality.name} {task.name} "
                          f"(valid: {', '.join(factories) or 'none'})")
    if p.metric != "auto" and p.metric not in task.metrics:
        raise ParamsError(f"evaluate.metric: {p.metric!r} does not fit a {task.name} task "
                          f"(valid: auto, {', '.join(task.metrics)})")
    return task.primary_metric(p.metric, split)


def run_baselines(p: EvaluateParams, task: Task, factories: dict[str, Any], inputs: dict[str, Any],
                  y: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Fit each baseline on the train rows the network learnt from and score it like the network
    (its own rule, fitted on the same splits)."""
    results: dict[str, dict[str, Any]] = {}
    if not p.baselines:
        return results
    X_train, y_train = inputs["train"], y["train"]
    rows = task.train_rows(y_train)
    if rows is not None:  # e.g. an anomaly task's normal rows
        X_train, y_train = _rows(X_train, rows), y_train[rows]
    X_train, y_train = baseline_train_set(X_train, y_train)
    for name in p.baselines:
        started = time.perf_counter()
        model = factories[name]().fit(X_train, y_train)
        outputs = {s: task.estimator_outputs(model, inputs[s]) for s in task.scored_splits}
        metrics, rule = task.score(y, outputs, p)
        if "value" in rule:
            metrics["threshold"] = rule["value"]
        results[name] = {**metrics, "fit_seconds": round(time.perf_counter() - started, 3)}
    return results


def baseline_train_set(X: Any, y: np.ndarray, cap: int = BASELINE_MAX_TRAIN_ROWS) -> tuple[Any, np.ndarray]:
    """What the baselines fit on: the whole train split, or a seeded sample of ``cap`` rows for huge data."""
    if len(y) <= cap:
        return X, y
    rows = np.sort(np.random.default_rng(0).choice(len(y), cap, replace=False))
    return _rows(X, rows), y[rows]


def _rows(X: Any, rows: np.ndarray) -> Any:
    return X[rows] if isinstance(X, np.ndarray) else [X[i] for i in rows]


def verdict(metrics: dict[str, Any], metric: str, task: Any = None) -> None:
    """Name the best baseline on the primary metric and the network's margin (negative: it trails);
    the task may add what the primary metric does not show (``Task.verdict_note``)."""
    if not metrics["baselines"]:
        metrics["verdict"] = f"no baselines run (evaluate.baselines is empty): nothing to compare {metric} with"
        return
    best = max(metrics["baselines"], key=lambda n: metrics["baselines"][n][metric])
    margin = round(metrics[metric] - metrics["baselines"][best][metric], 6)
    metrics["best_baseline"] = best
    metrics[f"dl_minus_best_baseline_{metric}"] = margin
    who = "the network beats" if margin > 0 else "the network ties" if margin == 0 else "the network trails"
    metrics["verdict"] = (f"{who} the best baseline ({best}) on test {metric}: {metrics[metric]:.4f} vs "
                          f"{metrics['baselines'][best][metric]:.4f} ({margin:+.4f})")
    note = task.verdict_note(metrics) if task is not None else None
    if note:
        metrics["verdict"] += f"; {note}"


def gate(p: EvaluateParams, metric: str, metrics: dict[str, Any]) -> dict[str, Any]:
    value = metrics[metric]
    passed = value >= p.min_score
    return {"passed": passed, "metric": metric, "value": value, "threshold": p.min_score,
            "reason": f"test {metric} {value:.4f} {'>=' if passed else '<'} evaluate.min_score {p.min_score}"}


def run(params: Params, split_dir: Path, train_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Score the trained model and the baselines on the test split; write metrics, plots, gate."""
    from pipelines.worker import Worker

    with Worker("pipelines.tracking:get_client", library="mlflow") as mlflow:  # imports on the other core
        return _run(params, Path(split_dir), Path(train_dir), Path(out_dir), mlflow)


def _run(params: Params, split_dir: Path, train_dir: Path, out_dir: Path, mlflow: Any) -> dict[str, Any]:
    p = params.evaluate
    split = read_json(split_dir / "split.json")
    state = preprocess_state(split_dir)
    modality, task = get_modality(split["kind"]), get_task(split["task"], params)
    factories = modality.baselines(task, split_dir, state)
    metric, why = check_params(p, modality, task, factories, split)
    run_info = read_json(train_dir / "run.json")
    y = {s: load_split(split_dir, s, preprocess=False)[1] for s in SPLITS}
    out = scored_outputs(task, split_dir, train_dir, state, split)
    scored, rule = task.score(y, out, p)
    if metric not in scored:
        raise ParamsError(f"evaluate.metric: {metric!r} is not defined for this data "
                          f"(available: {', '.join(k for k in task.metrics if k in scored)})")
    metrics: dict[str, Any] = {"task": task.name, "test_rows": int(len(y["test"])), **scored}
    if rule:
        metrics["threshold"] = rule
    metrics["fit_seconds"] = run_info["fit_seconds"]  # beside the baselines' own, for "is it worth it?"
    metrics["primary_metric"] = {"name": metric, "why": why}
    inputs = task.baseline_inputs(modality, split_dir, state) if p.baselines else {}
    metrics["baselines"] = run_baselines(p, task, factories, inputs, y)
    if p.baselines and len(y["train"]) > BASELINE_MAX_TRAIN_ROWS:
        metrics["baseline_train_rows"] = {
            "rows": BASELINE_MAX_TRAIN_ROWS, "of": int(len(y["train"])),
            "why": f"baselines fit on a seeded sample of {BASELINE_MAX_TRAIN_ROWS} train rows (the network on all); "
                   "val and test are complete, so every model is scored on the same rows"}
    verdict(metrics, metric, task)
    result = {**gate(p, metric, metrics), "decision_threshold": rule.get("value"), "rule": rule,
              "run_id": run_info["run_id"], "params": section_dict(p)}
    with staged_outputs(out_dir) as tmp:
        plots = tmp / "plots"
        plots.mkdir()
        report, files = task.report(y["test"], out["test"], rule, split, plots)
        worst = task.worst(y["test"], out["test"], rule, split)
        files.update(modality.error_analysis(split_dir, worst))
        modality.error_plots(split_dir, worst, plots)  # e.g. a PNG grid of the most confidently wrong images
        for name, header in PLOT_HEADERS.items():  # the other tasks' plots: header only, drawn empty
            files.setdefault(name, [header])
        for name, rows in files.items():
            with open(plots / name, "w", newline="") as fh:
                csv.writer(fh).writerows(rows)
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "gate.json", result)
        write_json(tmp / "report.json", report)
        mlflow.call("pipelines.evaluate:log_to_mlflow", run_info["run_id"], metrics, result, str(tmp))
        failpoint("evaluate.logged")
    log.info("test %s %.4f (primary: %s); %s; gate %s", metric, metrics[metric], why, metrics["verdict"],
             "PASS" if result["passed"] else "FAIL")
    return {metric: metrics[metric], "gate": result["passed"]}


def log_to_mlflow(run_id: str, metrics: dict[str, Any], gate: dict[str, Any], files: str) -> None:
    """Add test metrics, baselines, plots and the gate (written into ``files``) to the training run."""
    from mlflow.entities import Metric, RunTag

    folder = Path(files)
    client = tracking.get_client()
    now = int(time.time() * 1000)
    flat = {f"test_{k}": v for k, v in metrics.items() if isinstance(v, float) and k != "fit_seconds"}
    for name, res in metrics["baselines"].items():
        flat.update({f"baseline_{name}_{k}": v for k, v in res.items() if k != "fit_seconds"})
    logged = client.get_run(run_id).data.metrics  # a re-run (after a kill, say) adds no duplicate points
    fresh = [Metric(k, float(v), now, 0) for k, v in flat.items() if logged.get(k) != float(v)]
    client.log_batch(run_id, metrics=fresh,
                     tags=[RunTag("gate", "pass" if gate["passed"] else "fail"), RunTag("gate.reason", gate["reason"]),
                           # tags, not params: evaluate re-runs on the same training run when only
                           # the evaluate section changes, and MLflow params cannot change value
                           *(RunTag(f"evaluate.{k}", str(v)) for k, v in gate["params"].items())],
                     synchronous=True)
    for name in ("metrics.json", "report.json", "gate.json"):
        client.log_artifact(run_id, str(folder / name), artifact_path="evaluate")
    client.log_artifacts(run_id, str(folder / "plots"), artifact_path="evaluate/plots")


def main() -> None:
    step_main(run, ["split_dir", "train_dir", "out_dir"])


if __name__ == "__main__":
    main()
