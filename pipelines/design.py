"""Step 3 — design: build the architecture named in params for the data's shape, dry-run it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipelines.cli import step_main
from pipelines.data import load_split, preprocess_state
from pipelines.files import read_json, staged_outputs, write_json
from pipelines.params import Params
from pipelines.plugins import Task, get_modality, get_task

log = logging.getLogger(__name__)


def check_kind(name: str, task: Task) -> None:
    """Refuse an architecture of another kind than the task trains (a classifier for an anomaly task)."""
    from models import ModelError
    from models.registry import get_model_class, list_models

    def kind(arch: str) -> str:
        return getattr(get_model_class(arch), "kind", "predictor")

    if kind(name) != task.model_kind:
        fitting = [m for m in list_models() if kind(m) == task.model_kind]
        raise ModelError(f"model.name: {name!r} is a {kind(name)}; a {task.name} task trains a {task.model_kind} "
                         f"(valid: {', '.join(fitting) or 'none registered'})")


def run(params: Params, split_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Write ``model_spec.json``: arch + kwargs, input/output signature, parameter count."""
    from models import ModelError
    from models.registry import check_kwargs, create_model

    check_kwargs(params.model.name, params.model.kwargs)  # fail on a typo before paying for torch
    split = read_json(Path(split_dir) / "split.json")
    task = get_task(split["task"], params)
    check_kind(params.model.name, task)
    import torch

    input_shape = split["input_shape"]
    num_outputs = task.num_outputs(split)
    data_args = get_modality(split["kind"]).data_args(preprocess_state(Path(split_dir)))
    net = create_model(params.model.name, input_shape, num_outputs, data_args=data_args, **params.model.kwargs)

    X, _ = load_split(Path(split_dir), "train")
    batch = torch.from_numpy(X[:2])  # float features/images, or int64 token ids
    net.eval()
    try:
        checked = task.dry_run(net, batch, split)
    except (TypeError, ValueError, RuntimeError, IndexError) as exc:
        raise ModelError(f"model.name: {params.model.name!r} cannot take {split['kind']} inputs "
                         f"({batch.dtype}, shape {list(batch.shape[1:])}): {exc}") from None
    spec = {
        "arch": params.model.name,
        "kwargs": params.model.kwargs,
        "data_args": data_args,
        "task": task.name,
        "kind": split["kind"],
        "input": {"name": "input", "shape": [-1, *input_shape], "dtype": str(X.dtype)},
        "output": checked["output"],
        "num_outputs": num_outputs,
        "classes": split.get("classes"),
        "param_count": sum(p.numel() for p in net.parameters()),
        "trainable_params": sum(p.numel() for p in net.parameters() if p.requires_grad),
        "dry_run": checked["dry_run"],
    }
    with staged_outputs(out_dir) as tmp:
        write_json(tmp / "model_spec.json", spec)
    log.info("%s: %d parameters, output %s", spec["arch"], spec["param_count"], spec["output"]["shape"])
    return {"arch": spec["arch"], "param_count": spec["param_count"]}


def main() -> None:
    step_main(run, ["split_dir", "out_dir"])


if __name__ == "__main__":
    main()
