"""Step 5 — train: Lightning Trainer, early stopping, best checkpoint, everything logged to MLflow."""

from __future__ import annotations

import csv
import logging
import os
import tempfile
import time
from dataclasses import fields
from pathlib import Path
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader

from models.lit import LitModel
from models.registry import create_model
from pipelines import tracking
from pipelines.cli import step_main
from pipelines.data import preprocess_state
from pipelines.files import failpoint, load_arrays, read_json, save_arrays, staged_outputs, write_json
from pipelines.params import Params, ParamsError, section_dict
from pipelines.plugins import EXPORT_DIR, TRAIN_OUTPUTS, Exported, Task, get_modality, get_task, save_exported

log = logging.getLogger(__name__)

CHECKPOINT = "model.pt"
METRIC_CURVES = "metric_curves.csv"


def make_loaders(split_dir: Path, batch_size: int, seed: int, params: Params | None = None) -> tuple[DataLoader, DataLoader]:
    """Train (shuffled with a seeded generator) and val loaders; targets as the task's loss takes them.
    Both hold the rows the task learns from (``Task.train_rows``: e.g. normal rows only)."""
    from torch.utils.data import Subset

    split = read_json(Path(split_dir) / "split.json")
    task = get_task(split["task"], params)
    state = preprocess_state(split_dir)
    modality = get_modality(state["modality"])
    loaders = []
    for name in ("train", "val"):
        y = load_arrays(Path(split_dir) / f"{name}.npz", "y")["y"]
        # the modality's Dataset: in memory by default, streamed from disk for large image sets
        ds = modality.dataset(Path(split_dir), name, state, task.train_targets(y, state["target"]))
        rows = task.train_rows(y)
        if rows is not None:
            ds = Subset(ds, rows.tolist())
        gen = torch.Generator().manual_seed(seed)
        loaders.append(DataLoader(ds, batch_size=batch_size, shuffle=name == "train", generator=gen))
    return loaders[0], loaders[1]


def augmenter(params: Params, split_dir: Path) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The modality's train-time batch transform when ``train.augment`` is on (``auto``: when the
    modality augments this data by default, e.g. photos)."""
    if params.train.augment is False:
        return None
    state = preprocess_state(split_dir)
    modality = get_modality(state["modality"])
    if params.train.augment == "auto" and not modality.augments_by_default(state):
        return None
    fn = modality.augmenter(state)
    if fn is None:
        raise ParamsError(f"train.augment: {state['modality']} data has no augmentation; set it to false")
    return fn


def build_model(spec: dict[str, Any], recipe: dict[str, Any], epochs: int,
                augment: Callable[[torch.Tensor], torch.Tensor] | None, split_dir: Path,
                params: Params | None = None) -> L.LightningModule:
    """The task's LightningModule around the designed network (``LitModel`` for supervised tasks)."""
    net = create_model(spec["arch"], spec["input"]["shape"][1:], spec["num_outputs"],
                       data_args=spec.get("data_args"), **spec["kwargs"])
    task = get_task(recipe["task"], params)
    module = task.module(net, recipe, epochs, augment, Path(split_dir))
    return module if module is not None else LitModel(net, recipe, task, epochs=epochs, augment=augment)


ARTIFACT_EPOCHS = 25  # per-epoch artifacts (a GAN's sample grid) drawn about this many times per run


class EpochLogger(Callback):
    """Collects per-epoch metrics and sends each epoch to MLflow in one ``log_batch`` call."""

    def __init__(self, client: Any | None, run_id: str) -> None:
        self.client, self.run_id = client, run_id
        self.history: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from mlflow.entities import Metric

        row = {"epoch": trainer.current_epoch}
        row.update({k: float(v) for k, v in sorted(trainer.callback_metrics.items())})
        row["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        self.history.append(row)
        if self.client is None:  # a DDP worker: rank 0 logs
            return
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, row["epoch"]) for k, v in row.items() if k != "epoch"]
        self.client.log_batch(self.run_id, metrics=metrics, synchronous=True)
        # e.g. a GAN's grid of samples: about 25 per run (each costs ~0.4 s) and always the last epoch
        every = max(1, (trainer.max_epochs or 1) // ARTIFACT_EPOCHS)
        last = row["epoch"] == (trainer.max_epochs or 1) - 1
        if hasattr(pl_module, "epoch_artifact") and (row["epoch"] % every == 0 or last):
            with tempfile.TemporaryDirectory(prefix="epoch-") as tmp:
                path = pl_module.epoch_artifact(Path(tmp), row["epoch"])
                if path is not None:
                    self.client.log_artifact(self.run_id, str(path), artifact_path="epochs")
        failpoint("train.epoch")


def _run_tags(split: dict[str, Any], split_dir: Path, design_dir: Path, configure_dir: Path) -> dict[str, str]:
    sha = tracking.git_sha()
    return {
        "mlflow.source.git.commit": sha,
        "git_sha": sha,
        "data_hash": split["data_hash"],
        "split_hashes": ",".join(f"{k}:{v[:12]}" for k, v in split["hashes"].items()),
        "dvc.inputs": ",".join(str(p) for p in (split_dir, design_dir, configure_dir)),
        "dvc.stage": "train",
        "task": split["task"],
    }


def _save_best(lit: L.LightningModule, best_path: str, spec: dict[str, Any], out: Path) -> None:
    """Write the best weights with arch name + kwargs, loadable with ``torch.load(weights_only=True)``."""
    if best_path:
        state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
        lit.load_state_dict(state)
    torch.save({"arch": spec["arch"], "kwargs": spec["kwargs"], "data_args": spec.get("data_args") or {},
                "input_shape": spec["input"]["shape"][1:],
                "num_outputs": spec["num_outputs"], "task": spec["task"],
                "state_dict": lit.net.state_dict()}, out)


def _write_curves(history: list[dict[str, float]], path: Path) -> None:
    """``curves.csv``: every logged column per epoch; ``metric_curves.csv``: the task's own metric
    (accuracy, MAE...) as ``train``/``val`` columns, so one plot definition fits every task."""
    keys = sorted({k for row in history for k in row} - {"epoch"})
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["epoch", *keys])
        writer.writeheader()
        writer.writerows(history)
    names = [k[4:] for k in keys if k.startswith("val_") and k != "val_loss" and f"train_{k[4:]}" in keys]
    with open(path.with_name(METRIC_CURVES), "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["epoch", "metric", "train", "val"])
        if names:
            writer.writerows([row["epoch"], names[0], row.get(f"train_{names[0]}"), row.get(f"val_{names[0]}")]
                             for row in history)


def ddp_worker() -> bool:
    """True in a process Lightning's DDP launcher started (rank > 0): it runs this step's command again."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0) > 0 or int(os.environ.get("NODE_RANK", "0") or 0) > 0


def _trainer(p: Any, monitor: str | None, ckpt_dir: str, extra: list[Callback]) -> tuple[L.Trainer, Any]:
    """The Trainer every process of a run builds alike (DDP needs the same callbacks on every rank)."""
    checkpoint = None
    callbacks = list(extra)
    if monitor is not None:
        checkpoint = ModelCheckpoint(dirpath=ckpt_dir, monitor=monitor, mode="min", save_top_k=1, filename="best")
        callbacks = [EarlyStopping(monitor, patience=p.patience, mode="min"), checkpoint, *extra]
    trainer = L.Trainer(
        max_epochs=p.epochs, accelerator=p.accelerator, devices=p.devices, strategy=p.strategy,
        deterministic=True, logger=False, callbacks=callbacks, enable_checkpointing=checkpoint is not None,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    return trainer, checkpoint


def save_outputs_and_export(task: Task, split: dict[str, Any], split_dir: Path, checkpoint: Path, out: Path,
                            export: bool) -> Exported | None:
    """What the later steps read instead of loading torch, computed from the saved checkpoint along
    evaluate's own path: ``outputs.npz``, the head's raw outputs on each scored split (no arrays for
    a task that evaluates otherwise), and ``export/``: the served graph (the modality's preprocessing
    with the task's export head), its parity cases (graph inputs + PyTorch's outputs) and facts."""
    from models.registry import load_network
    from pipelines.data import load_split
    from pipelines.plugins import predict_outputs

    state = preprocess_state(split_dir)
    net = load_network(checkpoint)  # the saved weights, as evaluate would load them
    arrays = {}
    if task.outputs_in_train:
        head = task.head(net, state["target"])
        arrays = {s: predict_outputs(head, load_split(split_dir, s)[0]) for s in task.scored_splits}
    save_arrays(out / TRAIN_OUTPUTS, **arrays)
    if not export:
        return None
    folder = out / EXPORT_DIR
    folder.mkdir()
    started = time.perf_counter()
    exported = task.export(get_modality(split["kind"]), task.export_head(net, state["target"]), split_dir, state,
                           split, folder)
    exported.info["seconds"] = round(time.perf_counter() - started, 2)
    save_exported(exported, folder)
    log.info("exported %s/model.onnx in %.1fs (%d parity case(s))", folder.name, exported.info["seconds"],
             len(exported.cases))
    return exported


def log_onnx_model(run_id: str, folder: Path, exported: Exported, output_name: str) -> dict[str, str]:
    """Log the exported graph to the training run as an MLflow model (``onnx-model``: signature, pip
    requirements, the files it ships with, e.g. a tokenizer). Deploy registers versions of it and adds
    each version's own files (manifest, drift reference) under ``deploy/<name>/v<N>/`` of this model.
    Here because ``log_model`` maps every installed distribution to its modules to check the
    requirements (~1.4 s per process), which the training stage pays beside its fit, not deploy."""
    import mlflow
    import onnx
    from mlflow.models import infer_signature

    from serving.runtime import make_session

    feeds = {k: v[:2] for k, v in exported.cases[0].feeds.items()}
    output = make_session(folder / "model.onnx").run([output_name], feeds)[0]
    mlflow.set_tracking_uri(tracking.tracking_uri())
    info = mlflow.onnx.log_model(
        onnx.load(str(folder / "model.onnx")), name="onnx-model", run_id=run_id,
        signature=infer_signature(exported.example, output), pip_requirements=["onnxruntime", "numpy"],
        save_as_external_data=False, extra_files=[str(folder / f) for f in exported.files],
        onnx_execution_providers=["CPUExecutionProvider"],
    )
    return {"model_id": info.model_id, "uri": info.model_uri}


def run(params: Params, split_dir: Path, design_dir: Path, configure_dir: Path, out_dir: Path,
        callbacks: tuple[Callback, ...] = (), tags: dict[str, str] | None = None, export: bool = True) -> dict[str, Any]:
    """Train the designed network with the configured recipe; write checkpoint, curves, run id, the
    network's outputs and (``export``; a sweep's trials skip it) the ONNX graph deploy ships.
    ``callbacks`` join the Trainer's (e.g. a sweep's pruning), ``tags`` the MLflow run's (e.g.
    ``mlflow.parentRunId``)."""
    p = params.train
    if p.accelerator == "gpu" and not torch.cuda.is_available():  # before any work, not a Lightning traceback
        raise ParamsError("train.accelerator: 'gpu' but no CUDA device is visible here (use auto or cpu)")
    if p.accelerator == "gpu" and p.devices > torch.cuda.device_count():
        raise ParamsError(f"train.devices: {p.devices} GPUs asked, {torch.cuda.device_count()} visible")
    split_dir, design_dir, configure_dir = Path(split_dir), Path(design_dir), Path(configure_dir)
    spec = read_json(design_dir / "model_spec.json")
    recipe = read_json(configure_dir / "recipe.json")
    split = read_json(split_dir / "split.json")
    torch.set_num_threads(p.num_threads)
    L.seed_everything(p.seed, workers=True, verbose=False)
    train_dl, val_dl = make_loaders(split_dir, p.batch_size // p.devices, p.seed, params)  # per process
    lit = build_model(spec, recipe, p.epochs, augmenter(params, split_dir), split_dir, params)
    if ddp_worker():  # its shard of every epoch; rank 0 records the run and writes the outputs
        monitor = get_task(split["task"], params).monitor
        with tempfile.TemporaryDirectory(prefix="ckpt-") as ckpt_dir:
            _trainer(p, monitor, ckpt_dir, [EpochLogger(None, "")])[0].fit(lit, train_dl, val_dl)
        return {}

    client = tracking.get_client()
    exp_id = tracking.ensure_experiment(client, p.experiment)
    tracking.close_dead_runs(client, exp_id)
    what = {f.name: section_dict(getattr(params, f.name)) for f in fields(params)
            if f.name not in ("evaluate", "deploy")}  # what the trained weights depend on
    tags = {**_run_tags(split, split_dir, design_dir, configure_dir), **tracking.process_tags(), **(tags or {})}
    mlrun = client.create_run(exp_id, run_name=tracking.run_name(split["task"], spec["arch"], what), tags=tags)
    run_id = mlrun.info.run_id
    try:
        summary = _fit(params, lit, spec, recipe, split, train_dl, val_dl, client, run_id, out_dir, list(callbacks),
                       split_dir, export)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, SIGTERM (see pipelines.cli)
        client.set_terminated(run_id, status="KILLED")
        raise
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return summary


def _fit(params: Params, lit: L.LightningModule, spec: dict[str, Any], recipe: dict[str, Any], split: dict[str, Any],
         train_dl: DataLoader, val_dl: DataLoader, client: Any, run_id: str, out_dir: Path,
         extra: list[Callback], split_dir: Path, export: bool) -> dict[str, Any]:
    from mlflow.entities import Param

    p = params.train
    logged = {
        **tracking.flatten("data", split["data_params"]),
        **tracking.flatten("split", split["params"]),
        **tracking.flatten("model", {"arch": spec["arch"], **spec["kwargs"]}),
        **tracking.flatten("optim", recipe["params"]),
        **tracking.flatten("train", section_dict(p)),
        "optim.lr_used": str(recipe["optimizer"]["lr"]),
        "optim.lr_source": recipe["optimizer"]["lr_source"],
        "loss": recipe["loss"]["name"],
        "param_count": str(spec["param_count"]),
        **{f"split.size.{k}": str(v) for k, v in split["sizes"].items()},
    }
    client.log_batch(run_id, params=[Param(k, v) for k, v in logged.items()], synchronous=True)

    epoch_logger = EpochLogger(client, run_id)
    task = get_task(split["task"], params)
    monitor = task.monitor  # None (e.g. a GAN): no early stopping, the last epoch
    with tempfile.TemporaryDirectory(prefix="ckpt-") as ckpt_dir, staged_outputs(out_dir) as tmp:
        trainer, checkpoint = _trainer(p, monitor, ckpt_dir, [epoch_logger, *extra])
        started = time.perf_counter()
        trainer.fit(lit, train_dl, val_dl)
        fit_seconds = time.perf_counter() - started
        _save_best(lit, checkpoint.best_model_path if checkpoint else "", spec, tmp / CHECKPOINT)
        _write_curves(epoch_logger.history, tmp / "curves.csv")
        exported = save_outputs_and_export(task, split, split_dir, tmp / CHECKPOINT, tmp, export)
        logged = (log_onnx_model(run_id, tmp / EXPORT_DIR, exported, task.output_name)
                  if exported is not None else None)
        best = (min(epoch_logger.history, key=lambda r: r[monitor]) if monitor is not None
                else epoch_logger.history[-1])
        info = {"run_id": run_id, "experiment": p.experiment, "tracking_uri": tracking.tracking_uri(),
                "epochs_run": len(epoch_logger.history), "best_epoch": int(best["epoch"]),
                "best_val_loss": best["val_loss"], "best_val_acc": best.get("val_acc"),
                "best_val_mae_standardised": best.get("val_mae"),
                "best_val": {k: v for k, v in best.items() if k.startswith("val_")},
                "best_by": monitor or "last epoch", "strategy": p.strategy, "processes": p.devices,
                "stopped_early": trainer.early_stopping_callback is not None
                and trainer.early_stopping_callback.stopped_epoch > 0,
                "fit_seconds": round(fit_seconds, 3), "logged_model": logged}
        write_json(tmp / "run.json", info)
        for name in (CHECKPOINT, "curves.csv", METRIC_CURVES):
            client.log_artifact(run_id, str(tmp / name))
    client.log_metric(run_id, "fit_seconds", info["fit_seconds"])
    client.set_tag(run_id, "dvc.outputs", f"{out_dir}/{CHECKPOINT},{out_dir}/curves.csv,{out_dir}/run.json")
    log.info("trained %d epochs in %.2fs; best val_loss %.4f at epoch %d; MLflow run %s",
             info["epochs_run"], fit_seconds, info["best_val_loss"], info["best_epoch"], run_id)
    return {"run_id": run_id, "best_val_loss": info["best_val_loss"], "fit_seconds": info["fit_seconds"]}


def main() -> None:
    step_main(run, ["split_dir", "design_dir", "configure_dir", "out_dir"])


if __name__ == "__main__":
    main()
