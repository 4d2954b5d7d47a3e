"""Is a sweep worth it on digits? The default params.yaml vs the best of N sweep trials, on test.

Both use the same split (collect + split of params.yaml, seed 42). The default is trained once with
the step functions (design -> configure -> train -> evaluate, baselines included for reference); the
sweep is ``python -m pipelines.sweep --space presets/sweeps/digits.yaml --trials N --jobs J``, which
chooses its best trial on the *validation* accuracy; the table shows both splits for both. Wall time:
the default's steps (imports excluded), the sweep command end to end (its workers' start-up included).
Everything goes to a temporary folder and MLflow store. Prints a Markdown table:

    .venv/bin/python benchmarks/sweep_bench.py [--trials 20] [--jobs 2] [--space presets/sweeps/digits.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def default_run(work: Path, params_path: Path) -> dict:
    """The default params through the steps, as `dvc repro` runs them (deploy aside)."""
    from pipelines import collect, configure, design, evaluate, split, train
    from pipelines.files import read_json
    from pipelines.params import load_params
    from pipelines.sweep import validation_score

    params = load_params(params_path)
    started = time.perf_counter()
    collect.run(params, work / "collect")
    split.run(params, work / "collect", work / "split")
    design.run(params, work / "split", work / "design")
    configure.run(params, work / "split", work / "design", work / "configure")
    train.run(params, work / "split", work / "design", work / "configure", work / "train")
    evaluate.run(params, work / "split", work / "train", work / "evaluate")
    seconds = time.perf_counter() - started
    metrics = read_json(work / "evaluate" / "metrics.json")
    metric = metrics["primary_metric"]["name"]
    return {"metric": metric, "test": metrics[metric], "seconds": seconds,
            "val": validation_score(params, work / "split", work / "train", metric),
            "epochs": read_json(work / "train" / "run.json")["epochs_run"],
            "baselines": {name: res[metric] for name, res in metrics["baselines"].items()}}


def sweep_run(work: Path, params_path: Path, space: Path, trials: int, jobs: int) -> dict:
    cmd = [sys.executable, "-m", "pipelines.sweep", "--space", str(space), "--params", str(params_path),
           "--dir", str(work / "sweep"), "--trials", str(trials), "--jobs", str(jobs)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"sweep failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    best = json.loads((work / "sweep" / "best.json").read_text())
    import optuna

    study = optuna.load_study(study_name=space.stem, storage=f"sqlite:///{work / 'sweep' / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    epochs = [len(t.intermediate_values) for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    return {"best": best, "seconds": seconds, "complete": states.count("COMPLETE"),
            "pruned": states.count("PRUNED"), "failed": states.count("FAIL"), "epochs": sum(epochs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--space", type=Path, default=ROOT / "presets" / "sweeps" / "digits.yaml")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it (default: a temp one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        work = args.keep.resolve() if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
        os.chdir(work)  # MLflow puts a server-less store's artifacts under ./mlruns
        base = default_run(work / "default", args.params.resolve())
        swept = sweep_run(work, args.params.resolve(), args.space.resolve(), args.trials, args.jobs)
    m, best = base["metric"], swept["best"]
    print(f"\ndigits, {args.trials} trials on {args.jobs} worker processes, space {args.space.name}; "
          f"primary metric {m}; the sweep picks its best trial on val {m}\n")
    print(f"| configuration | val {m} | test {m} | trials (complete / pruned / failed) | epochs trained | wall s |")
    print("|---|---|---|---|---|---|")
    print(f"| default params.yaml | {base['val']:.4f} | {base['test']:.4f} | 1 | {base['epochs']} | {base['seconds']:.0f} |")
    print(f"| best of the sweep (trial {best['trial']}) | {best['value']:.4f} | {best[f'test_{m}']:.4f} | "
          f"{swept['complete']} / {swept['pruned']} / {swept['failed']} | {swept['epochs']} | {swept['seconds']:.0f} |")
    for name, value in base["baselines"].items():
        print(f"| baseline {name} (default split) | | {value:.4f} | | | |")
    print(f"\nbest params: {json.dumps(best['params'])}")


if __name__ == "__main__":
    main()
