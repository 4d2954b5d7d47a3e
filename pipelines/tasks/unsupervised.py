"""What the autoencoder tasks (``anomaly``, ``embedding``) share: optional labels, the reconstruction
loss (with input noise for a denoising autoencoder), and the heads that evaluate and the service run.

Labels are optional: a target column is read as class-label text and used to score only (an empty
``data.target`` where the source allows it, or every label empty, means "no labels"; encoded ``-1``).
The network is any registered architecture of ``kind = "autoencoder"`` (``models/autoencoder.py``):
``encode(x)``, ``errors(x, target)`` (per-part reconstruction errors) and ``corrupt(x, level)``.

Module-level imports are numpy only: the service imports the tasks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.files import DataError
from pipelines.plugins import Task

NO_LABEL = -1


def labelled(y: np.ndarray) -> bool:
    return bool(len(y)) and bool((np.asarray(y) != NO_LABEL).all())


class AutoencoderTask(Task):
    """Base of the tasks that train an autoencoder on the model inputs themselves."""

    model_kind = "autoencoder"
    needs_labels = False
    losses = ("reconstruction",)
    default_loss = "reconstruction"
    denoise = 0.0  # subclasses read it from their params section

    # ------------------------------------------------------------ collect / split

    def target_profile(self, values: Any) -> dict[str, Any]:
        labels = np.asarray(values, dtype=str)
        present = labels[labels != ""]
        if not len(present):
            return {"classes": [], "num_classes": 0, "labelled": False}
        names, counts = np.unique(present, return_counts=True)
        return {"classes": names.tolist(), "num_classes": int(len(names)), "labelled": len(present) == len(labels),
                "class_balance": {str(c): int(n) for c, n in zip(names, counts)}}

    def encode_targets(self, values: Any, profile: dict[str, Any], where: str) -> np.ndarray:
        labels = np.asarray(values, dtype=str)
        if not profile.get("labelled"):
            return np.full(len(labels), NO_LABEL, np.int64)
        index = {c: i for i, c in enumerate(profile["classes"])}
        y = np.fromiter((index.get(v, NO_LABEL) for v in labels), dtype=np.int64, count=len(labels))
        if (y == NO_LABEL).any():
            row = int(np.argmax(y == NO_LABEL))
            raise DataError(f"{where}: row {row}, target: {labels[row]!r} is not one of the profile classes "
                            f"{profile['classes']}")
        return y

    def strata(self, y: np.ndarray) -> tuple[np.ndarray, str]:
        if labelled(y):
            return y, "labels"
        return np.zeros(len(y), np.int64), "nothing (no labels)"

    def split_summary(self, y: np.ndarray, parts: dict[str, np.ndarray], profile: dict[str, Any]) -> dict[str, Any]:
        return {"labelled": labelled(y), "classes": profile.get("classes") or None}

    # ------------------------------------------------------------ design / configure / train

    def num_outputs(self, split: dict[str, Any]) -> int:
        return 0  # autoencoders reconstruct their inputs; what they answer comes from ``head``

    def choose_loss(self, p: Any, y_train: np.ndarray, num_outputs: int) -> dict[str, Any]:
        from pipelines.params import ParamsError

        if p.class_weights != "none":
            raise ParamsError(f"optim.class_weights: {p.class_weights!r} does not apply to a {self.name} task "
                              "(its autoencoder learns no classes); set it to none")
        why = ("set in params (optim.loss)" if p.loss != "auto" else
               "auto: the autoencoder's reconstruction error (squared error of numeric values and pixels, "
               "cross-entropy of categories), summed over the parts of a row")
        return {"name": "reconstruction", "why": why}

    def train_targets(self, y: np.ndarray, target_state: dict[str, Any]) -> Any:
        import torch

        return torch.as_tensor(y, dtype=torch.long)

    def training_loss(self, net: Any, x: Any, y: Any, loss_fn: Any, stage: str) -> tuple[Any, dict[str, Any]]:
        noisy = net.corrupt(x, self.denoise) if stage == "train" and self.denoise > 0 else x
        return net.errors(noisy, x).sum(1).mean(), {}

    def step(self, out: Any, y: Any, loss_fn: Any) -> tuple[Any, dict[str, Any]]:
        raise NotImplementedError("autoencoder tasks compute their loss in training_loss")

    def _dry_run(self, out: Any, batch: Any, name: str) -> dict[str, Any]:
        import torch

        if out.ndim != 2 or out.shape[0] != len(batch):
            raise ValueError(f"dry run produced {tuple(out.shape)} from {name}, expected ({len(batch)}, k)")
        return {"output": {"name": self.output_name, "shape": [-1, int(out.shape[1])], "dtype": "float32"},
                "dry_run": {"batch": len(batch), "output_shape": list(out.shape),
                            "finite": bool(torch.isfinite(out).all())}}

    # ------------------------------------------------------------ evaluate / deploy

    def export_head(self, net: Any, target_state: dict[str, Any]) -> Any:
        return self.head(net, target_state)

    def report_labels(self, y: np.ndarray, split: dict[str, Any]) -> list[str] | None:
        classes = split.get("classes")
        return [classes[i] for i in y] if classes and labelled(y) else None


def _module(fn_name: str) -> Any:
    """A ``torch.nn.Module`` class whose forward is ``net.<fn_name>(x)`` (built lazily: torch is heavy)."""
    from torch import nn

    class Head(nn.Module):
        def __init__(self, net: Any) -> None:
            super().__init__()
            self.net = net
            self.latent = getattr(net, "latent", None)

        def forward(self, x: Any) -> Any:
            return getattr(self.net, fn_name)(x)

    Head.__name__ = Head.__qualname__ = f"{fn_name.capitalize()}Head"
    return Head


def errors_head(net: Any) -> Any:
    """The network answering per-part reconstruction errors ``[N, P]`` (anomaly scores are their sum)."""
    return _module("errors")(net).eval()


def encode_head(net: Any) -> Any:
    """The network answering its latent vectors ``[N, latent]``."""
    return _module("encode")(net).eval()
