"""Deep text models vs the TF-IDF + logistic-regression baseline on a real labelled corpus, through
the real pipeline steps (collect -> split -> design -> configure -> train -> evaluate -> deploy, the
``run`` functions dvc.yaml chains, in a temp folder with its own sqlite MLflow store).

    .venv/bin/python benchmarks/text_bench.py [../shared/data/zh_reviews_dev.csv] \\
        [--archs fasttext textcnn] [--seeds 0 1 2] [--sizes 2000 5000] [--set optim.lr=0.01] [--overhead]

Params are ``presets/text.yaml`` (the default text preset, as a user gets it) with the corpus and
split fractions swapped in: every run holds out ``--val``/``--test`` texts (1,000 each by default)
and trains on ``--train`` texts (8,000); the learning curve subsamples the corpus (seeded) to
2k/5k/8k training texts with the same held-out sizes. Both accuracies come from ``metrics.json``
(the network under its own decision rule, the baseline under its own). ``--overhead`` also times a
plain torch loop on the same batches for as many epochs as the pipeline ran. Prints markdown tables.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = ROOT.parent / "shared" / "data" / "zh_reviews_dev.csv"


def parse_value(text: str) -> Any:
    return yaml.safe_load(text)


def bench_params(csv: Path, rows: int, seed: int, arch: str, val: int, test: int, overrides: list[str]) -> Any:
    """presets/text.yaml with this corpus, seed and held-out sizes; ``overrides``: ``section.key=value``."""
    from pipelines.params import parse_params

    raw = yaml.safe_load((ROOT / "presets" / "text.yaml").read_text())
    raw["data"].update(source=f"csv:{csv}", text="review", target="sentiment")
    raw["split"].update(seed=seed, val_fraction=val / rows, test_fraction=test / rows)
    if arch != raw["model"]["name"]:
        raw["model"] = {"name": arch, "kwargs": {}}  # the architecture's own defaults
    raw["evaluate"].update(min_score=0.0, baselines=["tfidf_logreg"])
    raw["deploy"].update(register=False, build_bento=False, model_name=f"bench-{arch}")
    raw["train"].update(experiment="text-bench")
    for item in overrides:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if section == "model" and name != "name":
            raw["model"].setdefault("kwargs", {})[name.removeprefix("kwargs.")] = parse_value(value)
        else:
            raw[section][name] = parse_value(value)
    return parse_params(raw, complete=True)


def plain_loop_seconds(work: Path, params: Any, epochs: int) -> float:
    """The same network, batches, optimizer and epochs (train + val pass each) as a bare torch loop:
    what the pipeline's training (Lightning, MLflow, checkpoints, early stopping) adds on top."""
    import torch

    from models.registry import create_model
    from pipelines.files import read_json
    from pipelines.train import make_loaders
    from train_overhead import plain_loop  # the digits benchmark's reference loop (benchmarks/ is on sys.path)

    spec = read_json(work / "design" / "model_spec.json")
    train_dl, val_dl = make_loaders(work / "split", params.train.batch_size, params.train.seed)
    torch.manual_seed(params.train.seed)
    model = create_model(spec["arch"], spec["input"]["shape"][1:], spec["num_outputs"],
                         data_args=spec["data_args"], **spec["kwargs"])
    opt = torch.optim.AdamW(model.parameters(), lr=params.optim.lr, weight_decay=params.optim.weight_decay)
    return round(plain_loop(model, opt, train_dl, val_dl, epochs), 3)


def run_once(corpus: pd.DataFrame, n_train: int, seed: int, arch: str, args: argparse.Namespace) -> dict[str, Any]:
    """One pipeline run in a temp folder; returns the accuracies and times from its outputs."""
    from tests.helpers import STEPS, run_steps
    from pipelines.files import read_json

    rows = n_train + args.val + args.test
    if rows > len(corpus):
        raise SystemExit(f"{rows} rows needed, the corpus has {len(corpus)}")
    with tempfile.TemporaryDirectory(prefix="text-bench-") as tmp:
        work = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
        csv = work / "reviews.csv"
        corpus.sample(n=rows, random_state=seed).to_csv(csv, index=False)
        params = bench_params(csv, rows, seed, arch, args.val, args.test, args.set)
        started = time.perf_counter()
        d = run_steps(params, work, STEPS[:-1] if args.no_deploy else STEPS)["dirs"]
        metrics, info = read_json(d["evaluate"] / "metrics.json"), read_json(d["train"] / "run.json")
        sizes = read_json(d["split"] / "split.json")["sizes"]
        base = metrics["baselines"]["tfidf_logreg"]
        plain = plain_loop_seconds(work, params, info["epochs_run"]) if args.overhead else None
        return {"plain_s": plain, "arch": arch, "seed": seed, "train": sizes["train"], "acc": metrics["accuracy"],
                "baseline": base["accuracy"], "fit_s": info["fit_seconds"], "epochs": info["epochs_run"],
                "best_epoch": info["best_epoch"], "baseline_s": base["fit_seconds"],
                "total_s": round(time.perf_counter() - started, 1)}


def mean_spread(values: list[float]) -> str:
    """``mean ± half the range`` in percent (one value: just it)."""
    pct = [100 * v for v in values]
    if len(pct) == 1:
        return f"{pct[0]:.1f}"
    return f"{statistics.mean(pct):.1f} ± {(max(pct) - min(pct)) / 2:.1f}"


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| model | train texts | seeds | model acc % | TF-IDF+LR acc % | model − baseline (pts) | "
             "train s (epochs run, best) | s / epoch |",
             "|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["arch"], r["train"]), []).append(r)
    for (arch, n), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        diff = [r["acc"] - r["baseline"] for r in rs]
        epochs = ", ".join(f"{r['epochs']}/{r['best_epoch']}" for r in rs)
        per_epoch = statistics.mean(r["fit_s"] / max(r["epochs"], 1) for r in rs)
        lines.append(f"| {arch} | {n} | {len(rs)} | {mean_spread([r['acc'] for r in rs])} | "
                     f"{mean_spread([r['baseline'] for r in rs])} | {100 * statistics.mean(diff):+.1f} | "
                     f"{statistics.mean(r['fit_s'] for r in rs):.0f} ({epochs}) | {per_epoch:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", nargs="?", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--archs", nargs="+", default=["fasttext"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--train", type=int, default=8000, help="training texts of the seed runs")
    parser.add_argument("--sizes", nargs="*", type=int, default=[2000, 5000],
                        help="extra training sizes for the learning curve (first seed only)")
    parser.add_argument("--val", type=int, default=1000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--set", nargs="*", default=[], help="params overrides, e.g. optim.lr=0.01 train.epochs=3")
    parser.add_argument("--no-deploy", action="store_true", help="skip export + parity")
    parser.add_argument("--overhead", action="store_true",
                        help="also time a plain torch loop over the same batches and epochs as each run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(1)
    corpus = pd.read_csv(args.csv, dtype=str, keep_default_na=False)
    results = []
    runs = [(n, s) for s in args.seeds for n in [args.train]] + [(n, args.seeds[0]) for n in args.sizes]
    for n_train, seed in runs:
        for arch in args.archs:
            r = run_once(corpus, n_train, seed, arch, args)
            print(r, flush=True)
            results.append(r)
    print(f"\n{args.csv.name}: {len(corpus)} texts, held out {args.val} val + {args.test} test per run, "
          f"params presets/text.yaml {' '.join(args.set)}\n")
    print(table(results))
    timed = [r for r in results if r["plain_s"]]
    if timed:
        print("\n| model | train texts | epochs | pipeline train s | plain torch loop s | ratio |")
        print("|---|---|---|---|---|---|")
        for r in timed:
            print(f"| {r['arch']} | {r['train']} | {r['epochs']} | {r['fit_s']:.1f} | {r['plain_s']:.1f} | "
                  f"{r['fit_s'] / r['plain_s']:.2f} |")


if __name__ == "__main__":
    main()
