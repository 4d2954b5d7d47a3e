"""The LightningModule that wraps any registered plain ``nn.Module`` (export touches only ``net``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn


def make_loss(cfg: dict[str, Any]) -> nn.Module | None:
    """Loss from the ``loss`` block of recipe.json (None: the task computes its own, e.g. an
    autoencoder's reconstruction error)."""
    name = cfg["name"]
    if name in ("reconstruction", "adversarial"):
        return None
    if name == "cross_entropy":
        weight = torch.tensor(cfg["class_weights"], dtype=torch.float32) if cfg.get("class_weights") else None
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.get("label_smoothing", 0.0))
    if name == "mse":
        return nn.MSELoss()
    if name == "huber":
        return nn.HuberLoss()
    raise ValueError(f"recipe.json: unknown loss {name!r}")


def make_optimizer(parameters: Any, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    name, lr, wd = cfg["name"], cfg["lr"], cfg.get("weight_decay", 0.0)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=cfg.get("momentum", 0.0), weight_decay=wd, nesterov=True)
    raise ValueError(f"recipe.json: unknown optimizer {name!r}")


def make_scheduler(opt: torch.optim.Optimizer, cfg: dict[str, Any], total_steps: int, epochs: int) -> dict | None:
    name = cfg["name"]
    if name == "none":
        return None
    if name == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=opt.param_groups[0]["lr"], total_steps=total_steps)
        return {"scheduler": sched, "interval": "step"}
    if name == "cosine":
        return {"scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1)), "interval": "epoch"}
    if name == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg["step_size"], gamma=cfg["gamma"])
        return {"scheduler": sched, "interval": "epoch"}
    raise ValueError(f"recipe.json: unknown scheduler {name!r}")


class LitModel(L.LightningModule):
    """Trains ``net`` with the loss/optimizer/scheduler of a recipe.json dict; the task (a
    ``pipelines.plugins.Task``) turns outputs and targets into the loss and the logged metrics."""

    def __init__(self, net: nn.Module, recipe: dict[str, Any], task: Any, epochs: int,
                 augment: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__()
        self.net = net
        self.recipe = recipe
        self.task = task
        self.epochs = epochs
        self.augment = augment
        self.loss_fn = make_loss(recipe["loss"])
        # val_loss (early stopping, best checkpoint) is the plain loss: class weights and label
        # smoothing shape what training rewards, but a weighted val_loss can prefer an early epoch
        # that predicts the minority class everywhere (measured: epoch 0 on two imbalanced tables)
        self.val_loss_fn = make_loss({**recipe["loss"], "class_weights": None, "label_smoothing": 0.0})

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        if stage == "train" and self.augment is not None:
            x = self.augment(x)
        loss, metrics = self.task.training_loss(self.net, x, y, self.loss_fn if stage == "train" else self.val_loss_fn,
                                                stage)
        sync = getattr(self._trainer, "world_size", 1) > 1  # DDP: each epoch's value is the mean over the processes' shards
        for name, value in metrics.items():
            self.log(f"{stage}_{name}", value, on_step=False, on_epoch=True, sync_dist=sync)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=stage == "val", sync_dist=sync)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> Any:
        opt = make_optimizer(self.parameters(), self.recipe["optimizer"])
        sched = make_scheduler(opt, self.recipe["scheduler"], int(self.trainer.estimated_stepping_batches), self.epochs)
        return opt if sched is None else {"optimizer": opt, "lr_scheduler": sched}
