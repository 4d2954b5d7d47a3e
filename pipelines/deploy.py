"""Step 7 — deploy: ONNX parity gate, MLflow registry (champion/challenger), Bento build.

Train exported ``model.onnx`` (the modality's preprocessing with the task's export head of the
network) with the parity cases (graph inputs and PyTorch's outputs on them) and logged it to its
MLflow run. Deploy runs the graph in ONNX Runtime on every case at each batch size (no torch import
here; the task says how outputs compare), registers a version of the logged model with this
deploy's manifest and drift reference beside it, and builds the Bento. A version becomes
``champion`` only when the evaluate gate passed and its primary metric is not worse than the
current champion's value of the same metric; the alias reason says when the champion was scored on
other data.
"""

from __future__ import annotations

from pipelines import worker

if __name__ == "__main__":  # the registry's MLflow import (~2.5 s, on its critical path) starts before ours
    worker.prestart("pipelines.tracking:get_client")

import datetime as dt  # noqa: E402 (after the prestart, on purpose)
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipelines import tracking
from pipelines.card import attach_card, prepare_card, write_card
from pipelines.cli import step_main
from pipelines.drift import REFERENCE, build_reference
from pipelines.data import preprocess_state
from pipelines.files import DataError, failpoint, read_json, sha256_file, staged_outputs, write_json
from pipelines.params import DeployParams, Params, section_dict
from pipelines.plugins import EXPORT_DIR, Exported, Task, get_modality, get_task, load_exported

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
ROOT = Path(__file__).resolve().parents[1]  # the project: serving/ and pipelines/ go into the Bento


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


def parity(session: Any, exported: Exported, task: Task, target_state: dict[str, Any], p: DeployParams) -> dict:
    """Every parity case of the export at every batch size, worst case first in the summary."""
    scale = task.parity_scale(target_state)
    reports = []
    for case in exported.cases:
        feeds = case.feeds
        report = parity_check(session, case.reference, lambda s, f=feeds: {k: v[s] for k, v in f.items()},
                              p.parity_batch_sizes, p.parity_atol, scale=scale, labels=task.compares_labels)
        reports.append({**case.tag, **report})
    agreements = [r["label_agreement"] for r in reports if r["label_agreement"] is not None]
    return {"rows": reports[0]["rows"], "atol": p.parity_atol, "scale": scale,
            "max_abs_diff": max(r["max_abs_diff"] for r in reports),
            "mean_abs_diff": float(np.mean([r["mean_abs_diff"] for r in reports])),
            "label_agreement": min(agreements) if agreements else None,
            "passed": all(r["passed"] for r in reports), "by_batch_size": reports[0]["by_batch_size"],
            "cases": reports, "export": exported.info}


def current_champion(client: Any, name: str, metric: str) -> dict[str, Any] | None:
    """The champion version's number, its test value of ``metric`` (None: never scored on it) and data hash."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no such model or no such alias yet
        return None
    value = mv.tags.get(f"test_{metric}")
    return {"version": str(mv.version), "value": float(value) if value is not None else None,
            "data_hash": mv.tags.get("data_hash"), "metric": mv.tags.get("primary_metric")}


def choose_alias(gate: dict[str, Any], champion: dict[str, Any] | None, data_hash: str) -> tuple[str, str]:
    """TFX-style blessing: champion only if the gate passed and the primary metric is not worse than
    the champion's value of the same metric."""
    metric, value = gate["metric"], float(gate["value"])
    if not gate["passed"]:
        return CHALLENGER, f"evaluate gate failed ({gate['reason']})"
    if champion is None:
        return CHAMPION, "gate passed and there is no current champion"
    note = ""
    if champion["data_hash"] and champion["data_hash"] != data_hash:
        note = (f"; note: champion v{champion['version']} was evaluated on other data (data_hash "
                f"{champion['data_hash'][:12]} vs {data_hash[:12]}), so the two test scores are not on one test set")
    if champion["value"] is None:
        return CHAMPION, (f"gate passed and champion v{champion['version']} has no test {metric} to compare "
                          f"(it was judged on {champion['metric'] or 'another metric'}){note}")
    if value >= champion["value"]:
        return CHAMPION, (f"gate passed and {metric} {value:.4f} >= champion v{champion['version']}'s "
                          f"{champion['value']:.4f}{note}")
    return CHALLENGER, (f"gate passed but {metric} {value:.4f} < champion v{champion['version']}'s "
                        f"{champion['value']:.4f}{note}")


def register(model_name: str, logged_model: dict[str, str], files: list[str], run_id: str, gate: dict,
             metrics: dict, data_hash: str, onnx_sha256: str) -> dict[str, Any]:
    """The registry version of this model, tags and all, and the alias it earns (not set yet: see
    ``move_alias``). The version's source is the model train logged to its run (``logged_model``); this
    version's own ``files`` (manifest, drift reference) go beside it under ``deploy_files_path``. A
    version with the same training run, ONNX bytes and scores is reused (its files written again: a
    killed deploy may have missed them), so going back to earlier params does not register the same
    model twice. The version is created with its tags in one call (a version is never seen without
    them). JSON in and out: deploy runs it in its warm MLflow worker (``pipelines.worker``)."""
    import tempfile

    from serving.model import deploy_files_path

    import mlflow

    # the registry resolves a models:/<id> source through MLflow's process-wide tracking URI
    mlflow.set_tracking_uri(tracking.tracking_uri())
    client = tracking.get_client()
    champion = current_champion(client, model_name, gate["metric"])
    alias, reason = choose_alias(gate, champion, data_hash)
    tags = {f"test_{k}": str(v) for k, v in metrics.items() if isinstance(v, float) and k != "fit_seconds"}
    tags.update(primary_metric=gate["metric"], data_hash=data_hash, gate="pass" if gate["passed"] else "fail",
                onnx_sha256=onnx_sha256)
    version = _existing_version(client, model_name, run_id, tags)
    if version is not None:
        if champion is not None and champion["version"] == version:
            alias, reason = CHAMPION, f"v{version} (this model) is the champion already"
        client.set_model_version_tag(model_name, version, "alias_reason", reason)
        log.info("%s version %s holds this model already (run %s, same ONNX bytes and scores): not registered again",
                 model_name, version, run_id)
    else:
        _ensure_registered_model(client, model_name)
        mv = client.create_model_version(model_name, source=logged_model["uri"], run_id=run_id,
                                         model_id=logged_model["model_id"], tags={**tags, "alias_reason": reason},
                                         await_creation_for=60)
        version = str(mv.version)
    with tempfile.TemporaryDirectory(prefix="deploy-files-") as tmp:
        for f in files:
            shutil.copy(f, tmp)
        client.log_model_artifacts(logged_model["model_id"], tmp, deploy_files_path(model_name, version))
    return {"version": version, "alias": alias, "alias_reason": reason,
            "previous_champion": champion["version"] if champion else None,
            "model_uri": f"models:/{model_name}/{version}"}


def _ensure_registered_model(client: Any, name: str) -> None:
    """``mlflow.register_model`` without its prints (``Registered model ... already exists``)."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def _existing_version(client: Any, name: str, run_id: str, tags: dict[str, str]) -> str | None:
    """The newest version of this run with the same ONNX bytes, data and evaluation (every tag equal)."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:
        return None
    same = [mv for mv in found if all(mv.tags.get(k) == v for k, v in tags.items())]
    return str(max(int(mv.version) for mv in same)) if same else None


# An alias is moved only once the deploy's outputs are complete. Between moving it and finishing,
# a journal beside the outputs says where it pointed before; a deploy killed in that window is found
# by the next one (its pid is dead) and the alias is put back.
JOURNAL = ".deploy-alias-journal.json"


def move_alias(name: str, alias: str, version: str, journal: str, pid: int) -> None:
    """Point ``alias`` at ``version``, journalled for deploy ``pid`` (run in its MLflow worker)."""
    from mlflow.exceptions import MlflowException

    client = tracking.get_client()
    try:
        before: str | None = str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        before = None
    write_json(journal, {"pid": pid, "model_name": name, "alias": alias, "version": version, "previous": before})
    client.set_registered_model_alias(name, alias, version)


def attach(model_name: str, version: str, card: str, run_id: str) -> str:
    """``attach_card`` in deploy's MLflow worker."""
    return attach_card(tracking.get_client(), model_name, version, Path(card), run_id)


def undo_interrupted(journal: Path) -> None:
    """Put back an alias that a killed deploy moved before its outputs were complete."""
    from pipelines.files import pid_alive

    if not journal.exists():
        return
    entry = read_json(journal)
    pid = int(entry["pid"])
    if pid != os.getpid() and pid_alive(pid):
        raise DeployError(f"{journal}: another deploy (pid {pid}) is running in this project; wait for it")
    client = tracking.get_client()
    name, alias, previous = entry["model_name"], entry["alias"], entry["previous"]
    if previous is None:
        client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, previous)
    client.set_model_version_tag(name, entry["version"], "deploy", "interrupted: its alias was put back")
    journal.unlink()
    log.warning("a deploy of %s v%s was killed after moving alias %r; the alias points at %s again", name,
                entry["version"], alias, f"v{previous}" if previous else "no version")


def run(params: Params, split_dir: Path, train_dir: Path, evaluate_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Check, register and package the evaluated model that train exported.

    MLflow and BentoML are imported by two warm workers (``pipelines.worker``): MLflow's, on the
    critical path (import, register, then card and Bento), starts first (as a step: before this
    module's own imports) on the other core while this process checks parity and writes the drift
    reference; BentoML's once the card's imports are done here (a third busy process on two cores
    slows the registry's). The Bento is built in a clean context (serving/, pipelines/ and this
    model) whose path the BentoML worker is given."""
    import tempfile

    from serving.build import build_env

    p = params.deploy
    journal = Path(out_dir).parent / JOURNAL
    if p.register:
        undo_interrupted(journal)
    with tempfile.TemporaryDirectory(prefix="bento-ctx-") as ctx, \
            worker.Worker("pipelines.tracking:get_client", library="mlflow", start=p.register) as mlflow, \
            worker.Worker("serving.build:warm", env=build_env(Path(ctx)), start=p.build_bento, deferred=True) as bento:
        try:
            return _run(params, Path(split_dir), Path(train_dir), Path(evaluate_dir), Path(out_dir), journal,
                        mlflow, bento, Path(ctx))
        except BaseException:
            undo_interrupted(journal)  # an alias this deploy moved goes back
            raise


def _run(params: Params, split_dir: Path, train_dir: Path, evaluate_dir: Path, out_dir: Path, journal: Path,
         mlflow: Any, bento: Any, ctx: Path) -> dict[str, Any]:
    from serving.build import copy_sources
    from serving.runtime import make_session

    p = params.deploy
    split = read_json(split_dir / "split.json")
    run_info = read_json(train_dir / "run.json")
    gate = read_json(evaluate_dir / "gate.json")
    metrics = read_json(evaluate_dir / "metrics.json")
    state = preprocess_state(split_dir)
    modality, task = get_modality(split["kind"]), get_task(split["task"], params)
    exported = load_exported(train_dir / EXPORT_DIR)
    if p.register and not run_info.get("logged_model"):
        raise DeployError(f"{train_dir / 'run.json'}: training run {run_info['run_id']} logged no model to "
                          "register (trained with export off, e.g. a sweep trial): train it again with `dvc repro`")
    rule = gate.get("rule") or {}
    with staged_outputs(out_dir, replace=True) as tmp:
        for name in ("model.onnx", *exported.files):  # tokenizer.json for text
            shutil.copy(train_dir / EXPORT_DIR / name, tmp / name)
        started = time.perf_counter()
        session = make_session(tmp / "model.onnx")
        report = _checked(parity(session, exported, task, state["target"], p), p)
        report["seconds"] = round(time.perf_counter() - started, 2)
        write_json(tmp / "parity.json", report)
        onnx_sha256 = sha256_file(tmp / "model.onnx")
        manifest = {
            "model_name": p.model_name, "version": None, "alias": None, "alias_reason": None,
            "onnx_file": "model.onnx", "onnx_sha256": onnx_sha256,
            "run_id": run_info["run_id"], "data_hash": split["data_hash"], "git_sha": tracking.git_sha(),
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, float) and k != "fit_seconds"},
            "primary_metric": gate["metric"], "gate": gate["passed"],
            "decision_threshold": gate.get("decision_threshold"), "rule": rule,
            "task": task.name, "route": task.route, "kind": modality.name, "target": split.get("target"),
            "input": exported.input_schema, "output": task.output_spec(split, rule),
            "classes": split.get("classes"), "bento_tag": None,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "params": section_dict(p),
        }
        write_json(tmp / "manifest.json", manifest)  # the copy stored with the registered model
        # the drift reference (pipelines/drift.py): inputs of the val split, predictions on test
        reference = build_reference(split_dir, tmp)
        if p.register:
            files = [tmp / "manifest.json", *([tmp / REFERENCE] if reference is not None else [])]
            registered = mlflow.submit("pipelines.deploy:register", p.model_name, run_info["logged_model"],
                                       [str(f) for f in files], run_info["run_id"], gate, metrics,
                                       split["data_hash"], onnx_sha256)
            prepare_card()
            if p.build_bento:  # meanwhile (the MLflow worker is still importing it, on the other core)
                bento.start()
                copy_sources(ROOT, ctx)
            manifest.update(registered())
            failpoint("deploy.registered")
        card = write_card(split_dir, train_dir, evaluate_dir, tmp, manifest)  # names the version: after register
        attached = (mlflow.submit("pipelines.deploy:attach", p.model_name, manifest["version"], str(card),
                                  run_info["run_id"]) if p.register else lambda: None)
        write_json(tmp / "manifest.json", manifest)  # the Bento's copy: everything but its own tag
        if p.build_bento:
            manifest["bento_tag"] = build_bento(tmp, ctx, bento)
            write_json(tmp / "manifest.json", manifest)
        attached()
        if p.register:  # last: the alias moves to a version whose deploy is complete
            mlflow.call("pipelines.deploy:move_alias", p.model_name, manifest["alias"], manifest["version"],
                        str(journal), os.getpid())
            failpoint("deploy.alias_moved")
    journal.unlink(missing_ok=True)
    log.info("deployed %s v%s as %s; parity max |diff| %.2e; bento %s", p.model_name, manifest.get("version"),
             manifest.get("alias"), report["max_abs_diff"], manifest["bento_tag"])
    return {"version": manifest.get("version"), "alias": manifest.get("alias"), "bento_tag": manifest["bento_tag"],
            "max_abs_diff": report["max_abs_diff"]}


def _checked(parity: dict, p: DeployParams) -> dict:
    if not parity["passed"]:
        agreement = parity["label_agreement"]
        raise DeployError(
            f"parity gate failed: max |onnx - torch| = {parity['max_abs_diff']:.3g} (deploy.parity_atol "
            f"{p.parity_atol:g}), label agreement {'n/a' if agreement is None else f'{agreement:.4%}'} "
            f"over {parity['rows']} test rows")
    return parity


def build_bento(model_dir: Path, ctx: Path, worker: Any) -> str:
    """Build the Bento from the clean context ``ctx``: serving/ + pipelines/ + this model's files as
    artifacts/deploy/, in the warm BentoML ``worker`` whose environment names that model dir.

    The Bento's copy of manifest.json cannot hold its own tag; the deploy output's copy does.
    """
    from serving.build import copy_sources

    if not (ctx / "serving").exists():  # copied already while the registry worked
        copy_sources(ROOT, ctx)
    (ctx / "artifacts" / "deploy").mkdir(parents=True)
    for path in model_dir.iterdir():  # model.onnx, manifest.json (+ tokenizer.json for text)
        if path.name != "parity.json":
            shutil.copy(path, ctx / "artifacts" / "deploy" / path.name)
    return worker.call("serving.build:build_here", str(ctx))


def main() -> None:
    step_main(run, ["split_dir", "train_dir", "evaluate_dir", "out_dir"])


if __name__ == "__main__":
    main()
