"""Step 4 — configure: task-aware loss, class weights, optimizer, lr (optionally found), scheduler."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.cli import step_main
from pipelines.files import load_arrays, read_json, staged_outputs, write_json
from pipelines.params import OptimParams, Params, ParamsError, section_dict
from pipelines.plugins import Task, get_task

log = logging.getLogger(__name__)


def choose_loss(p: OptimParams, task: Task, y_train: np.ndarray, num_classes: int) -> dict[str, Any]:
    """The task's loss for ``optim.loss`` (``auto``: the task's default), refused if it does not fit."""
    if p.loss != "auto" and p.loss not in task.losses:
        raise ParamsError(f"optim.loss: {p.loss!r} does not fit a {task.name} task (valid: auto, "
                          f"{', '.join(task.losses)})")
    return task.choose_loss(p, y_train, num_classes)


def find_lr(params: Params, split_dir: Path, spec: dict[str, Any], recipe: dict[str, Any]) -> dict[str, Any]:
    """Lightning's learning-rate range test (imports lightning: only paid when ``optim.lr: auto``)."""
    import lightning as L
    from lightning.pytorch.tuner import Tuner

    from pipelines.train import build_model, make_loaders

    L.seed_everything(params.train.seed, workers=True, verbose=False)
    train_dl, val_dl = make_loaders(split_dir, params.train.batch_size, params.train.seed, params)
    probe = dict(recipe, optimizer=dict(recipe["optimizer"], lr=1e-3), scheduler={"name": "none"})
    lit = build_model(spec, probe, params.train.epochs, None, split_dir, params)
    with tempfile.TemporaryDirectory(prefix="lr-find-") as tmp:  # lr_find writes a checkpoint there
        trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp)
        # early_stop_threshold=None: on small data one noisy batch would end the sweep after a few steps
        result = Tuner(trainer).lr_find(lit, train_dataloaders=train_dl, val_dataloaders=val_dl, min_lr=1e-5,
                                        max_lr=1.0, num_training=100, early_stop_threshold=None, update_attr=False)
    suggestion = result.suggestion() if result is not None else None
    if suggestion is None:
        raise ParamsError("optim.lr: 'auto' could not find a learning rate (loss curve too flat); set a number")
    return {"lr": float(suggestion), "lr_source": "lr_finder",
            "lr_why": "Lightning lr_find: steepest descent of the loss over 100 steps in [1e-5, 1]"}


def run(params: Params, split_dir: Path, design_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Write ``recipe.json``: what loss/optimizer/lr/scheduler was chosen, and why."""
    p = params.optim
    split = read_json(Path(split_dir) / "split.json")
    spec = read_json(Path(design_dir) / "model_spec.json")
    y_train = load_arrays(Path(split_dir) / "train.npz", "y")["y"]
    task = get_task(split["task"], params)
    recipe: dict[str, Any] = {
        "task": task.name,
        "params": section_dict(p),
        "loss": choose_loss(p, task, y_train, spec["num_outputs"]),
        "optimizer": {"name": p.optimizer, "lr": p.lr, "lr_source": "params", "weight_decay": p.weight_decay},
        "scheduler": {"name": p.scheduler},
    }
    if p.optimizer == "sgd":
        recipe["optimizer"]["momentum"] = p.momentum
    if p.scheduler == "step":
        recipe["scheduler"].update(step_size=p.step_size, gamma=p.gamma)
    if p.scheduler == "onecycle":
        recipe["scheduler"]["why"] = "one-cycle: warm-up then anneal, the lr above is the peak"
    if p.lr == "auto":
        recipe["optimizer"].update(find_lr(params, Path(split_dir), spec, recipe))
    with staged_outputs(out_dir) as tmp:
        write_json(tmp / "recipe.json", recipe)
    log.info("loss %s, %s lr=%.3g (%s), scheduler %s", recipe["loss"]["name"], p.optimizer,
             recipe["optimizer"]["lr"], recipe["optimizer"]["lr_source"], p.scheduler)
    return {"loss": recipe["loss"]["name"], "lr": recipe["optimizer"]["lr"]}


def main() -> None:
    step_main(run, ["split_dir", "design_dir", "out_dir"])


if __name__ == "__main__":
    main()
