"""Scale: a generated mixed-type table of N rows (default 1 M) through the whole tabular pipeline.

    PATH=.venv/bin:$PATH python benchmarks/scale_bench.py [--rows 1000000] [--epochs 2] [--keep]

Copies the project into a fresh git + DVC repo in a temp dir, writes ``data/raw/scale.csv`` (numeric
columns with missing values, category strings with missing values, a Yes/No column, a small integer
code, a row ID that collect drops, and a ~18 % positive binary target), ``dvc add``s it, points
params.yaml at it as the README's "Tables" section says (``presets/breast_cancer.yaml``, the tabular
preset, with ``data.source: csv:...`` and the overrides given on the command line), then runs
``dvc repro -s <stage>`` for each stage in dvc.yaml order. For each stage it reports the wall time
and the peak resident memory of the whole process tree (dvc + the stage's python; RSS summed over
the processes, polled every 50 ms, so shared pages count twice: an upper bound), and prints a
markdown table. A full ``dvc repro`` is the sum of the rows (each row includes DVC's own start-up and
hashing). ``--repro-rounds N`` then runs ``dvc repro -f`` N times, as a user would, and times each stage
inside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import copy_project  # noqa: E402  (the project files dvc repro needs)


def scale_table(n: int, seed: int = 0) -> pd.DataFrame:
    """Customers: 6 numeric (2 with ~5 % missing), 4 category strings (one with ~3 % missing), a
    Yes/No column, a 0-4 code, a row ID; target ``churned`` ~18 % "Yes"."""
    rng = np.random.default_rng(seed)
    contract = rng.choice(np.array(["monthly", "yearly", "two-year"], dtype=object), n, p=[0.5, 0.3, 0.2])
    region = rng.choice(np.array(["north", "south", "east", "west", "central"], dtype=object), n)
    plan = rng.choice(np.array([f"plan_{i:02d}" for i in range(40)], dtype=object), n)
    df = pd.DataFrame({
        "customer_id": np.char.add("C", np.arange(10_000_000, 10_000_000 + n).astype(str)).astype(object),
        "age": rng.integers(18, 90, n).astype(np.float64),
        "tenure_months": rng.gamma(2.0, 12.0, n).round(1),
        "monthly_spend": rng.gamma(2.0, 30.0, n).round(2),
        "balance": rng.normal(1000.0, 400.0, n).round(2),
        "score": rng.random(n).round(4),
        "support_calls": rng.poisson(1.0, n).astype(np.float64) + rng.random(n).round(2),
        "gender": rng.choice(np.array(["F", "M"], dtype=object), n),
        "region": region, "contract": contract, "plan": plan,
        "paperless": rng.choice(np.array(["Yes", "No"], dtype=object), n),
        "household": rng.integers(0, 5, n),
    })
    logit = (-3.2 + 1.8 * (contract == "monthly") + 0.02 * (df.monthly_spend - 60) - 0.03 * df.tenure_months
             + 0.5 * df.support_calls + 0.6 * (region == "south") + 0.8 * (df.score > 0.9))
    df["churned"] = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "Yes", "No")
    df.loc[rng.random(n) < 0.05, "age"] = np.nan
    df.loc[rng.random(n) < 0.05, "balance"] = np.nan
    df.loc[rng.random(n) < 0.03, "region"] = None
    return df


def sh(cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def setup(repo: Path, rows: int, overrides: dict[str, dict], env: dict[str, str]) -> float:
    """Fresh git + DVC copy of the project with the table added; returns seconds to write the CSV."""
    copy_project(repo)
    params = yaml.safe_load((ROOT / "presets" / "breast_cancer.yaml").read_text())
    params["data"].update(source="csv:data/raw/scale.csv", target="churned", task="auto")
    for section, values in overrides.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    started = time.perf_counter()
    (repo / "data" / "raw").mkdir(parents=True, exist_ok=True)
    scale_table(rows).to_csv(repo / "data" / "raw" / "scale.csv", index=False)
    written = time.perf_counter() - started
    sh(["git", "init", "-q"], repo, env)
    sh(["dvc", "init", "-q"], repo, env)
    sh(["dvc", "add", "-q", "data/raw/scale.csv"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "scale benchmark"], repo, env)
    return written


def host_reference(env: dict[str, str], runs: int = 3) -> float:
    """Median seconds of ``python -c "import mlflow"``: the host's speed at the moment (the shared 2 cores
    vary ~1.5x with other jobs), and the import on evaluate's and deploy's critical path."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import mlflow"], env=env, check=True)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def cpu_seconds() -> float:
    """User + system CPU seconds of this process's waited-for children so far (a stage's whole tree)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_measured(cmd: list[str], cwd: Path, env: dict[str, str], log_path: Path) -> tuple[float, int, int]:
    """Wall seconds, peak RSS summed over the process tree, and the exit status."""
    started = time.perf_counter()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        root, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.05)
    return time.perf_counter() - started, peak, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--model", default="tab_mlp")
    ap.add_argument("--epochs", type=int, default=None, help="train.epochs (default: the preset's)")
    ap.add_argument("--batch-size", type=int, default=None, help="train.batch_size (default: the preset's)")
    ap.add_argument("--baselines", default=None, help="comma-separated evaluate.baselines (default: preset's)")
    ap.add_argument("--build-bento", choices=("true", "false"), default=None)
    ap.add_argument("--work", type=Path, default=None, help="project copy goes here (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the temp project")
    ap.add_argument("--repro-rounds", type=int, default=0,
                    help="then N forced full `dvc repro -f` runs (one DVC process, as a user runs it), each "
                         "stage timed from DVC's 'Running stage' lines")
    args = ap.parse_args()

    overrides: dict[str, dict] = {"model": {"name": args.model, "kwargs": {}}, "train": {}, "evaluate": {},
                                  "deploy": {"model_name": "dlops-scale"}}
    if args.epochs is not None:
        overrides["train"]["epochs"] = args.epochs
    if args.batch_size is not None:
        overrides["train"]["batch_size"] = args.batch_size
    if args.baselines is not None:
        overrides["evaluate"]["baselines"] = [b for b in args.baselines.split(",") if b]
    if args.build_bento is not None:
        overrides["deploy"]["build_bento"] = args.build_bento == "true"
    overrides["evaluate"]["min_score"] = 0.5  # the benchmark measures time, not the gate

    base = args.work or Path(tempfile.mkdtemp(prefix="dlops-scale-"))
    repo = base / "repo"
    repo.mkdir(parents=True)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               MLFLOW_TRACKING_URI=f"sqlite:///{base / 'mlflow.db'}", BENTOML_HOME=str(base / "bentoml"),
               GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@localhost", GIT_COMMITTER_NAME="bench",
               GIT_COMMITTER_EMAIL="bench@localhost")
    try:
        written = setup(repo, args.rows, overrides, env)
        csv_mb = (repo / "data" / "raw" / "scale.csv").stat().st_size / 2**20
        print(f"{args.rows:,} rows, {csv_mb:.0f} MB CSV written in {written:.1f} s; project at {repo}", flush=True)
        stages = list(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
        reference = host_reference(env)
        print(f"host reference: `python -c 'import mlflow'` {reference:.2f} s (median of 3)", flush=True)
        rows = []
        for stage in stages:
            cpu = cpu_seconds()
            secs, peak, rc = run_measured(["dvc", "repro", "-s", stage], repo, env, base / "repro.log")
            rows.append((stage, secs, peak))
            print(f"  {stage}: {secs:.1f} s, peak {peak / 2**30:.2f} GiB, CPU {cpu_seconds() - cpu:.1f} s (dvc + stage)"
                  + ("" if rc == 0 else f"  FAILED rc={rc}"), flush=True)
            if rc:
                print((base / "repro.log").read_text()[-4000:])
                sys.exit(rc)
        report(repo, rows)
        if args.repro_rounds:
            full_repro(repo, env, args.repro_rounds, stages)
            print(f"host reference after: `python -c 'import mlflow'` {host_reference(env):.2f} s")
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(base, ignore_errors=True)


def full_repro(repo: Path, env: dict[str, str], rounds: int, stages: list[str]) -> None:
    """Seconds of each stage inside one ``dvc repro -f`` (from one 'Running stage' line to the next; the
    last stage includes DVC writing dvc.lock): no DVC start-up per stage, unlike ``dvc repro -s``."""
    import re

    times: dict[str, list[float]] = {s: [] for s in [*stages, "total"]}
    for _ in range(rounds):
        started, marks = time.perf_counter(), []
        proc = subprocess.Popen(["dvc", "repro", "-f"], cwd=repo, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            if m := re.match(r"Running stage '([\w-]+)'", line):
                marks.append((m.group(1), time.perf_counter() - started))
        if proc.wait():
            sys.exit(f"dvc repro -f failed ({proc.returncode})")
        marks.append(("total", time.perf_counter() - started))
        for (stage, t0), (_, t1) in zip(marks, marks[1:]):
            times[stage].append(t1 - t0)
        times["total"].append(marks[-1][1])
    print(f"\none `dvc repro -f` ({rounds} rounds, seconds per round):\n\n| stage | seconds |\n|---|---|")
    for stage, values in times.items():
        print(f"| {stage} | {', '.join(f'{v:.1f}' for v in values)} |")


def report(repo: Path, rows: list[tuple[str, float, int]]) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    sizes = json.loads((repo / "artifacts" / "split" / "split.json").read_text())["sizes"]
    metrics = json.loads((repo / "artifacts" / "evaluate" / "metrics.json").read_text())
    run = json.loads((repo / "artifacts" / "train" / "run.json").read_text())
    print(f"\nmodel {params['model']['name']}, {params['train']['epochs']} epochs x batch "
          f"{params['train']['batch_size']}, split {sizes}, epochs run: {run.get('epochs_run', '?')}")
    print("\n| stage | seconds | peak RSS (GiB) |\n|---|---|---|")
    for stage, secs, peak in rows:
        print(f"| {stage} | {secs:.1f} | {peak / 2**30:.2f} |")
    print(f"| **whole pipeline** | **{sum(r[1] for r in rows):.1f}** | **{max(r[2] for r in rows) / 2**30:.2f}** |")
    primary = metrics["primary_metric"]["name"]
    print(f"\ntest {primary} {metrics[primary]:.4f} (network, fit {metrics['fit_seconds']} s); baselines: "
          + ", ".join(f"{n} {b[primary]:.4f} (fit {b['fit_seconds']} s"
                      + (f", {b['train_rows']:,} train rows" if "train_rows" in b else "") + ")"
                      for n, b in metrics["baselines"].items()))


if __name__ == "__main__":
    main()
