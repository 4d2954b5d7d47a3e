"""Step 7 — deploy: ONNX export + parity gate, MLflow registry (champion/challenger), Bento build."""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np

from pipelines import tracking
from pipelines.cli import step_main
from pipelines.files import DataError, read_json, sha256_file, staged_outputs, write_json
from pipelines.params import DeployParams, Params, section_dict

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"


class DeployError(DataError):
    """The exported model failed a check (parity, shape); the message carries the numbers."""


def parity_check(session: Any, reference: np.ndarray, feeds: Callable[[slice], dict[str, np.ndarray]],
                  batch_sizes: tuple[int, ...], atol: float, scale: float = 1.0, labels: bool = True) -> dict:
    """ONNX Runtime vs PyTorch (``reference``) over all rows at each batch size: max/mean |diff|
    (divided by ``scale``: a regression target's std, so ``atol`` means the same at any unit) and
    agreement of predicted labels."""
    n = len(reference)
    results = []
    for bs in batch_sizes:
        out = np.concatenate([session.run(None, feeds(slice(i, i + bs)))[0] for i in range(0, n, bs)])
        diff = np.abs(out - reference) / scale
        agreement = float((out.argmax(1) == reference.argmax(1)).mean()) if labels else None
        results.append({"batch_size": bs, "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                        "label_agreement": agreement})
    worst = max(r["max_abs_diff"] for r in results)
    agreement = min(r["label_agreement"] for r in results) if labels else None
    return {"rows": int(n), "atol": atol, "scale": scale, "max_abs_diff": worst,
            "mean_abs_diff": float(np.mean([r["mean_abs_diff"] for r in results])), "label_agreement": agreement,
            "passed": worst <= atol and agreement in (None, 1.0), "by_batch_size": results}


def parity_report(session: Any, model: Any, X: np.ndarray, batch_sizes: tuple[int, ...], atol: float) -> dict:
    """Parity for a model whose graph input is one array ``input`` (images, flat features)."""
    import torch

    with torch.no_grad():
        reference = model(torch.from_numpy(X)).numpy()
    return parity_check(session, reference, lambda s: {"input": X[s]}, batch_sizes, atol)


def choose_alias(gate_passed: bool, value: float, champion_value: float | None, metric: str) -> tuple[str, str]:
    """TFX-style blessing: champion only if the gate passed and the metric is not worse."""
    if not gate_passed:
        return CHALLENGER, f"evaluate gate failed ({metric} {value:.4f} below evaluate.min_accuracy)"
    if champion_value is None:
        return CHAMPION, "gate passed and there is no current champion"
    if value >= champion_value:
        return CHAMPION, f"gate passed and {metric} {value:.4f} >= current champion's {champion_value:.4f}"
    return CHALLENGER, f"gate passed but {metric} {value:.4f} < current champion's {champion_value:.4f}"


def current_champion(client: Any, name: str, metric: str) -> tuple[str | None, float | None]:
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no such model or no such alias yet
        return None, None
    value = mv.tags.get(f"test_{metric}")
    return str(mv.version), float(value) if value is not None else None


def register(p: DeployParams, onnx_path: Path, extra_files: list[Path], run_id: str, gate: dict, metrics: dict,
             X_example: Any, logits_example: np.ndarray) -> dict[str, Any]:
    """Log the ONNX model to the training run, register a version, set its alias."""
    import mlflow
    import onnx
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(tracking.tracking_uri())
    client = tracking.get_client()
    metric = gate["metric"]
    champ_version, champ_value = current_champion(client, p.model_name, metric)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.onnx.log_model(
            onnx.load(str(onnx_path)), name="onnx-model", registered_model_name=p.model_name,
            signature=infer_signature(X_example, logits_example), pip_requirements=["onnxruntime", "numpy"],
            save_as_external_data=False, extra_files=[str(f) for f in extra_files],
            onnx_execution_providers=["CPUExecutionProvider"], await_registration_for=60,
        )
    version = str(info.registered_model_version)
    value = float(metrics[metric])
    alias, reason = choose_alias(bool(gate["passed"]), value, champ_value, metric)
    client.set_model_version_tag(p.model_name, version, f"test_{metric}", str(value))
    client.set_model_version_tag(p.model_name, version, "gate", "pass" if gate["passed"] else "fail")
    client.set_model_version_tag(p.model_name, version, "alias_reason", reason)
    client.set_registered_model_alias(p.model_name, alias, version)
    log.info("registered %s version %s as %s: %s", p.model_name, version, alias, reason)
    return {"version": version, "alias": alias, "alias_reason": reason, "previous_champion": champ_version,
            "model_uri": f"models:/{p.model_name}/{version}"}


def run(params: Params, split_dir: Path, train_dir: Path, evaluate_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Export, check, register and package the evaluated model."""
    from pipelines.evaluate import load_network

    p = params.deploy
    split_dir, train_dir, evaluate_dir = Path(split_dir), Path(train_dir), Path(evaluate_dir)
    split = read_json(split_dir / "split.json")
    run_info = read_json(train_dir / "run.json")
    gate = read_json(evaluate_dir / "gate.json")
    metrics = read_json(evaluate_dir / "metrics.json")
    preprocess = read_json(split_dir / "preprocess.json")
    net = load_network(train_dir / "model.pt")

    with staged_outputs(out_dir) as tmp:
        started = time.perf_counter()
        if split["kind"] == "tabular":
            parity, schema = _export_tabular(p, net, split_dir, split, preprocess, tmp)
        elif split["kind"] == "text":
            parity, schema = _export_text(p, net, split_dir, split, preprocess, tmp)
        else:
            parity, schema = _export_array(p, net, split_dir, split, preprocess, tmp)
        parity["export"]["seconds"] = round(time.perf_counter() - started, 2)
        example = parity.pop("signature_example")
        write_json(tmp / "parity.json", parity)
        manifest = {
            "model_name": p.model_name, "version": None, "alias": None, "alias_reason": None,
            "onnx_file": "model.onnx", "onnx_sha256": sha256_file(tmp / "model.onnx"),
            "run_id": run_info["run_id"], "data_hash": split["data_hash"], "git_sha": tracking.git_sha(),
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, float) and k != "fit_seconds"},
            "gate": gate["passed"], "decision_threshold": gate.get("decision_threshold"),
            "task": split["task"], "kind": split["kind"], "target": split.get("target"),
            **{k: v for k, v in schema.items() if k != "files"},
            "classes": split.get("classes"), "bento_tag": None,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "params": section_dict(p),
        }
        write_json(tmp / "manifest.json", manifest)  # the copy stored with the registered model
        if p.register:
            extra = [tmp / "manifest.json", *(tmp / f for f in schema.get("files", []))]
            manifest.update(register(p, tmp / "model.onnx", extra, run_info["run_id"], gate, metrics, *example))
        write_json(tmp / "manifest.json", manifest)
    if p.build_bento:
        try:
            manifest["bento_tag"] = build_bento(Path(out_dir))
        except Exception:
            shutil.rmtree(out_dir, ignore_errors=True)  # no partial outputs
            raise
        write_json(Path(out_dir) / "manifest.json.tmp", manifest)
        os.replace(Path(out_dir) / "manifest.json.tmp", Path(out_dir) / "manifest.json")
    log.info("deployed %s v%s as %s; parity max |diff| %.2e; bento %s", p.model_name, manifest.get("version"),
             manifest.get("alias"), parity["max_abs_diff"], manifest["bento_tag"])
    return {"version": manifest.get("version"), "alias": manifest.get("alias"), "bento_tag": manifest["bento_tag"],
            "max_abs_diff": parity["max_abs_diff"]}


def _export_array(p: DeployParams, net: Any, split_dir: Path, split: dict, preprocess: dict,
                  tmp: Path) -> tuple[dict, dict]:
    """Images (or other fixed-shape arrays): standardisation baked in front of the network."""
    from pipelines.data import load_split
    from pipelines.export import INPUT_NAME, OUTPUT_NAME, Deployable, export_onnx
    from serving.runtime import make_session

    input_shape = split["input_shape"]
    model = Deployable(net, preprocess, input_shape).eval()
    X_test = load_split(split_dir, "test", preprocess=False)[0].astype(np.float32)
    export = export_onnx(model, input_shape, tmp / "model.onnx")
    session = make_session(tmp / "model.onnx")
    parity = {**parity_report(session, model, X_test, p.parity_batch_sizes, p.parity_atol), "export": export}
    parity["signature_example"] = (X_test[:2], session.run(None, {INPUT_NAME: X_test[:2]})[0])
    schema = {"input": {"name": INPUT_NAME, "shape": [-1, *input_shape], "dtype": "float32",
                        "value_range": split.get("value_range")},
              "output": {"name": OUTPUT_NAME, "shape": [-1, len(split["classes"])], "dtype": "float32"}}
    return _checked(parity, p), schema


def _export_tabular(p: DeployParams, net: Any, split_dir: Path, split: dict, preprocess: dict,
                    tmp: Path) -> tuple[dict, dict]:
    """Tables: the fitted preprocessing graph (raw columns in) composed with the network."""
    import onnx
    import pandas as pd
    import torch

    from pipelines import tabular_prep
    from pipelines.data import load_split
    from pipelines.export import TargetScale, compose_with_preprocessing, export_onnx
    from serving.runtime import make_session

    scaler = preprocess.get("target_scaler")
    head = (TargetScale(net, scaler["mean"], scaler["std"]) if scaler else net).eval()
    export = export_onnx(head, split["input_shape"], tmp / "net.onnx",
                         output_name="logits" if split["task"] == "classification" else "prediction")
    composed = compose_with_preprocessing(onnx.load(str(split_dir / "preprocess.onnx")), tmp / "net.onnx",
                                          tmp / "model.onnx")
    (tmp / "net.onnx").unlink()
    X_test, _ = load_split(split_dir, "test")
    raw = pd.read_parquet(split_dir / "test.parquet")
    with torch.no_grad():
        reference = head(torch.from_numpy(X_test)).numpy()
    feeds = tabular_prep.onnx_feeds(raw, preprocess)
    session = make_session(tmp / "model.onnx")
    parity = parity_check(session, reference, lambda s: {k: v[s] for k, v in feeds.items()}, p.parity_batch_sizes,
                          p.parity_atol, scale=scaler["std"] if scaler else 1.0, labels=scaler is None)
    parity["export"] = {**export, **composed}
    example = {k: v[:2] for k, v in feeds.items()}
    parity["signature_example"] = (raw.drop(columns=[split["target"]]).iloc[:2], session.run(None, example)[0])
    columns = [{"name": c, "type": "numeric"} for c in preprocess["numeric"]]
    columns += [{"name": c["name"], "type": "categorical", "categories": c["categories"]}
                for c in preprocess["categorical"]]
    out_name = composed["outputs"][0]
    width = len(split["classes"]) if split["task"] == "classification" else 1
    schema = {"input": {"kind": "records", "columns": columns},
              "output": {"name": out_name, "shape": [-1, width], "dtype": "float32"}}
    return _checked(parity, p), schema


def _export_text(p: DeployParams, net: Any, split_dir: Path, split: dict, preprocess: dict,
                 tmp: Path) -> tuple[dict, dict]:
    """Token ids in (batch and sequence axes dynamic), logits out; the tokenizer ships beside it."""
    import torch

    from pipelines.data import load_split
    from pipelines.export import INPUT_NAME, OUTPUT_NAME, export_onnx
    from serving.runtime import make_session

    X_test, _ = load_split(split_dir, "test")
    longest = int((X_test != 0).sum(1).max())
    export = export_onnx(net, split["input_shape"], tmp / "model.onnx", example=torch.from_numpy(X_test[:4]),
                         dynamic_axes={0: "batch", 1: "seq"})
    shutil.copy(split_dir / preprocess["tokenizer"], tmp / "tokenizer.json")
    session = make_session(tmp / "model.onnx")
    reports = []
    # the full padded width and a trimmed one: the sequence axis must really be dynamic
    for width in sorted({X_test.shape[1], max(2, longest // 2)}):
        X = np.ascontiguousarray(X_test[:, :width])
        with torch.no_grad():
            reference = net(torch.from_numpy(X)).numpy()
        report = parity_check(session, reference, lambda s, X=X: {INPUT_NAME: X[s]}, p.parity_batch_sizes, p.parity_atol)
        reports.append({**report, "seq_len": width})
    parity = {"rows": reports[0]["rows"], "atol": p.parity_atol, "scale": 1.0,
              "max_abs_diff": max(r["max_abs_diff"] for r in reports),
              "mean_abs_diff": float(np.mean([r["mean_abs_diff"] for r in reports])),
              "label_agreement": min(r["label_agreement"] for r in reports),
              "passed": all(r["passed"] for r in reports), "by_seq_len": reports, "export": export}
    parity["signature_example"] = (X_test[:2], session.run(None, {INPUT_NAME: X_test[:2]})[0])
    schema = {"input": {"kind": "texts", "name": INPUT_NAME, "dtype": "int64", "max_len": preprocess["max_len"],
                        "tokenizer": "tokenizer.json", "tokenizer_sha256": sha256_file(tmp / "tokenizer.json")},
              "output": {"name": OUTPUT_NAME, "shape": [-1, len(split["classes"])], "dtype": "float32"},
              "files": ["tokenizer.json"]}
    return _checked(parity, p), schema


def _checked(parity: dict, p: DeployParams) -> dict:
    if not parity["passed"]:
        agreement = parity["label_agreement"]
        raise DeployError(
            f"parity gate failed: max |onnx - torch| = {parity['max_abs_diff']:.3g} (deploy.parity_atol "
            f"{p.parity_atol:g}), label agreement {'n/a' if agreement is None else f'{agreement:.4%}'} "
            f"over {parity['rows']} test rows")
    return parity


def build_bento(model_dir: Path) -> str:
    """``bentoml build`` over a clean context: serving/ + this model's files as artifacts/deploy/.

    The Bento's copy of manifest.json cannot hold its own tag; the deploy output's copy does.
    """
    import tempfile

    from serving.build import build_bento as bentoml_build

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="bento-ctx-") as ctx:
        ctx_path = Path(ctx)
        shutil.copytree(root / "serving", ctx_path / "serving", ignore=shutil.ignore_patterns("__pycache__"))
        (ctx_path / "artifacts" / "deploy").mkdir(parents=True)
        for path in model_dir.iterdir():  # model.onnx, manifest.json (+ tokenizer.json for text)
            if path.name != "parity.json":
                shutil.copy(path, ctx_path / "artifacts" / "deploy" / path.name)
        return bentoml_build(ctx_path, None)


def main() -> None:
    step_main(run, ["split_dir", "train_dir", "evaluate_dir", "out_dir"])


if __name__ == "__main__":
    main()
