"""Training overhead of Lightning (+ MLflow logging) over a plain PyTorch loop, side by side.

Same CNN, same data (the digits train split from artifacts/split), same batches, same epochs,
one intra-op thread. Prints a table of seconds and ratios to the plain loop. Run after `dvc repro`:

    .venv/bin/python benchmarks/train_overhead.py [--epochs 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L  # noqa: E402
import torch  # noqa: E402

from models.lit import LitModel  # noqa: E402
from models.registry import create_model  # noqa: E402
from pipelines.files import read_json  # noqa: E402
from pipelines.plugins import get_task  # noqa: E402
from pipelines.train import EpochLogger, make_loaders  # noqa: E402

SPLIT = Path("artifacts/split")
RECIPE = {"task": "classification", "loss": {"name": "cross_entropy"},
          "optimizer": {"name": "adamw", "lr": 3e-3}, "scheduler": {"name": "none"}}


def net():
    spec = read_json("artifacts/design/model_spec.json")
    torch.manual_seed(0)
    return create_model(spec["arch"], spec["input"]["shape"][1:], spec["num_outputs"], **spec["kwargs"])


def plain(epochs: int) -> float:
    train_dl, val_dl = make_loaders(SPLIT, 64, 0)
    model = net()
    return plain_loop(model, torch.optim.AdamW(model.parameters(), lr=3e-3), train_dl, val_dl, epochs)


def plain_loop(model: torch.nn.Module, opt: torch.optim.Optimizer, train_dl, val_dl, epochs: int) -> float:
    """Seconds for ``epochs`` of a bare torch loop (train pass + val pass each): the reference that the
    pipeline's training (Lightning, MLflow, checkpoints, early stopping) is measured against."""
    loss_fn = torch.nn.CrossEntropyLoss()
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for x, y in train_dl:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            for x, y in val_dl:
                loss_fn(model(x), y)
    return time.perf_counter() - started


def lightning(epochs: int, with_mlflow: bool) -> float:
    train_dl, val_dl = make_loaders(SPLIT, 64, 0)
    callbacks = []
    started = time.perf_counter()
    if with_mlflow:  # what pipelines/train.py does: one client, one log_batch per epoch
        from pipelines import tracking

        client = tracking.get_client()
        run = client.create_run(tracking.ensure_experiment(client, "benchmark"))
        callbacks.append(EpochLogger(client, run.info.run_id))
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=callbacks)
    trainer.fit(LitModel(net(), RECIPE, get_task(RECIPE["task"]), epochs), train_dl, val_dl)
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/bench.db"
        runners = {"plain torch loop": lambda: plain(args.epochs),
                   "lightning": lambda: lightning(args.epochs, False),
                   "lightning + mlflow (log_batch/epoch)": lambda: lightning(args.epochs, True)}
        lightning(1, True)  # warm-up: first MLflow client creates the database
        times = {name: [] for name in runners}
        for _ in range(args.repeats):  # interleaved so that machine noise hits all alike
            for name, fn in runners.items():
                times[name].append(fn())
    base = statistics.median(times["plain torch loop"])
    print(f"CNN on digits, {args.epochs} epochs, median of {args.repeats}, 1 thread")
    print(f"| {'variant':38s} | seconds | ratio to plain |")
    print(f"|{'-' * 40}|---------|----------------|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name:38s} | {med:7.2f} | {med / base:14.2f} |")


if __name__ == "__main__":
    main()
