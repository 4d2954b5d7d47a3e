"""The quality bars of the three autoencoder / GAN tasks, measured through the real pipeline steps
(collect -> split -> design -> configure -> train -> evaluate, the ``run`` functions dvc.yaml chains,
in a temp folder with its own sqlite MLflow store), each network beside its traditional baselines from
the same ``metrics.json``:

* **embedding** -- ``presets/digits_embedding.yaml``: sklearn digits, an autoencoder's latent space +
  k-means (k = 10) vs ``pca_kmeans`` (PCA to the same dimension + the same k-means). Bar: test ARI of
  the network >= that of PCA.
* **anomaly** -- ``presets/anomaly_table.yaml`` with a generated table (seeded, 4,000 rows, 3 %
  anomalies: correlated numeric columns, two categorical ones; the anomalies break the correlation
  structure or the category/number link, only a few are plain extremes) vs ``isolation_forest``,
  ``knn_distance``, ``pca_error``. Bar: ROC-AUC of the network >= Isolation Forest's - 0.02. The test
  scores are recomputed from the trained network and refitted baselines (as evaluate does; checked
  against metrics.json) to give ROC-AUC per kind of anomaly: where each method wins.
* **generation** -- ``presets/digits_gan.yaml``: a conditional DCGAN on the digits vs ``gmm`` (a
  Gaussian mixture per class), all judged by the same CNN. Bars: confident_share >= 0.80 and every
  class covered (class_coverage = 1). For scale, the judge (re-trained as evaluate trains it: same seed,
  same weights) also reads the real train and test digits (``--no-reference`` skips it): a generator
  that drew digits like the held-out ones would score what the real test images score.

    .venv/bin/python benchmarks/unsupervised_bench.py                       # all three, 1 seed (~8 min, 2 cores)
    .venv/bin/python benchmarks/unsupervised_bench.py --only anomaly --seeds 3
    .venv/bin/python benchmarks/unsupervised_bench.py --only generation --epochs 40 --set optim.lr=0.0003

``--seeds N`` runs seeds 0..N-1: split seed 42 + i, train seed 7 + i (and the generated table's seed i).
``--set section.key=value`` overrides a params value in every scenario run (``model.<kwarg>=...`` for a
model kwarg). Prints one Markdown table per scenario, wall times and a summary "bar | measured | holds?".
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

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("collect", "split", "design", "configure", "train", "evaluate")
SCENARIOS = ("embedding", "anomaly", "generation")
PRESETS = {"embedding": "digits_embedding.yaml", "anomaly": "anomaly_table.yaml", "generation": "digits_gan.yaml"}
ANOMALY_KINDS = ("correlation", "category", "nonlinear", "extreme")


# ---------------------------------------------------------------- params and the steps


def bench_params(scenario: str, seed: int, epochs: int | None, overrides: list[str],
                 data: dict[str, Any] | None = None) -> Any:
    """The scenario's preset, as a user gets it, with the seed, no registry/Bento and ``overrides``."""
    from pipelines.params import parse_params

    raw = yaml.safe_load((ROOT / "presets" / PRESETS[scenario]).read_text())
    raw["data"].update(data or {})
    raw["split"]["seed"] = 42 + seed
    raw["train"].update(seed=7 + seed, experiment=f"unsupervised-bench-{scenario}")
    if epochs is not None:
        raw["train"]["epochs"] = epochs
    raw["deploy"].update(register=False, build_bento=False)
    for item in overrides:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if section == "model" and name != "name":
            raw["model"].setdefault("kwargs", {})[name.removeprefix("kwargs.")] = yaml.safe_load(value)
        else:
            raw[section][name] = yaml.safe_load(value)
    return parse_params(raw, complete=True)


def run_steps(params: Any, work: Path) -> dict[str, Any]:
    """collect -> ... -> evaluate into ``work/<step>``; metrics.json, run.json and seconds per step."""
    from pipelines.files import read_json
    from tests.helpers import run_steps as run_pipeline_steps

    done = run_pipeline_steps(params, work, STEPS)
    d, seconds = done["dirs"], done["seconds"]
    return {"metrics": read_json(d["evaluate"] / "metrics.json"), "run": read_json(d["train"] / "run.json"),
            "seconds": seconds, "dirs": d}


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}"
    return str(value)


def mean_spread(values: list[float], digits: int = 3) -> str:
    """``mean ± half the range`` (one value: just it)."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {(max(values) - min(values)) / 2:.{digits}f}"


# ---------------------------------------------------------------- embedding


def embedding(args: argparse.Namespace, work: Path) -> tuple[list[str], list[tuple[str, str, bool]]]:
    runs = []
    for seed in range(args.seeds):
        params = bench_params("embedding", seed, args.epochs, args.set)
        r = run_steps(params, work / f"embedding-{seed}")
        runs.append(r)
        log_run("embedding", seed, r)
    p = params
    lines = [f"digits, {p.model.name} {p.model.kwargs}, k = {p.embedding.clusters}, test split "
             f"({runs[0]['metrics']['test_rows']} images), {args.seeds} seed(s)", "",
             "| model | dim | ARI | NMI | silhouette (own space) | fit s (epochs run) |", "|---|---|---|---|---|---|"]
    dim = p.model.kwargs.get("latent", 8)
    lines.append(f"| {p.model.name} latent + k-means | {dim} | {mean_spread([r['metrics']['ari'] for r in runs])} | "
                 f"{mean_spread([r['metrics']['nmi'] for r in runs])} | "
                 f"{mean_spread([r['metrics']['silhouette'] for r in runs])} | "
                 f"{statistics.mean(r['run']['fit_seconds'] for r in runs):.0f} "
                 f"({', '.join(str(r['run']['epochs_run']) for r in runs)}) |")
    base = [r["metrics"]["baselines"]["pca_kmeans"] for r in runs]
    lines.append(f"| pca_kmeans | {dim} | {mean_spread([b['ari'] for b in base])} | "
                 f"{mean_spread([b['nmi'] for b in base])} | {mean_spread([b['silhouette'] for b in base])} | "
                 f"{statistics.mean(b['fit_seconds'] for b in base):.1f} |")
    ae = [r["metrics"]["ari"] for r in runs]
    pca = [b["ari"] for b in base]
    wins = sum(a >= b for a, b in zip(ae, pca))
    bars = [("embedding: AE ARI >= PCA ARI (same dim, k-means k=10)",
             f"{statistics.mean(ae):.3f} vs {statistics.mean(pca):.3f} ({wins}/{len(ae)} seeds)",
             wins == len(ae))]
    return lines, bars


# ---------------------------------------------------------------- anomaly


def anomaly_table(n: int = 4000, rate: float = 0.03, seed: int = 0) -> pd.DataFrame:
    """Transactions-like rows: two hidden factors drive five correlated numbers (one of them non-linearly),
    the channel shifts two of them, the region follows a number. Anomalies (``rate`` of the rows, kind in
    ``kind``) are normal rows with the structure broken, values mostly inside the normal ranges:

    * correlation -- one or two numeric columns replaced by values of another row (each marginal
      unchanged, the link to the other columns gone);
    * category -- the channel or the region swapped for one that does not fit the numbers;
    * nonlinear -- ``x4`` (a curve of ``x1``) reflected through its mean: a normal-sized value on the
      wrong side of the curve;
    * extreme -- one column 4-6 standard deviations out (what Isolation Forest is built for).
    """
    rng = np.random.default_rng(seed)
    f1, f2 = rng.normal(size=n), rng.normal(size=n)
    channel = rng.choice(np.array(["web", "store", "phone"]), n, p=[0.5, 0.35, 0.15])
    shift = np.select([channel == "web", channel == "store"], [0.0, 1.5], -1.5)
    x1 = f1 + 0.3 * rng.normal(size=n)
    x2 = 0.8 * f1 + 0.6 * f2 + 0.3 * rng.normal(size=n)
    x3 = f2 + 0.5 * shift + 0.3 * rng.normal(size=n)
    x4 = 0.8 * x1 ** 2 + 0.3 * rng.normal(size=n)
    x5 = np.exp(0.5 * f1 - 0.3 * f2 + 0.2 * rng.normal(size=n)) * (2.0 + shift)  # an amount, channel-scaled
    region = np.where(x3 + 0.3 * rng.normal(size=n) > 0.4, "north", "south")
    df = pd.DataFrame({"x1": x1, "x2": x2, "x3": x3, "x4": x4, "x5": x5, "channel": channel, "region": region})

    n_bad = int(round(rate * n))
    bad = rng.choice(n, n_bad, replace=False)
    kinds = np.array([ANOMALY_KINDS[i] for i in rng.choice(4, n_bad, p=[0.4, 0.25, 0.2, 0.15])])
    numeric = ["x1", "x2", "x3", "x5"]
    for row, kind in zip(bad, kinds):
        if kind == "correlation":
            for col in rng.choice(numeric, rng.integers(1, 3), replace=False):
                donor = rng.integers(n)
                while abs(df.at[donor, col] - df.at[row, col]) < df[col].std():  # a value that really moves
                    donor = rng.integers(n)
                df.at[row, col] = df.at[donor, col]
        elif kind == "category":
            if rng.random() < 0.5:  # the channel that fits x3/x5 least
                df.at[row, "channel"] = {"web": "phone", "store": "phone", "phone": "store"}[df.at[row, "channel"]]
            else:
                df.at[row, "region"] = "south" if df.at[row, "region"] == "north" else "north"
        elif kind == "nonlinear":
            df.at[row, "x4"] = 2 * df["x4"].mean() - df.at[row, "x4"] + rng.choice([-0.5, 0.5])
        else:
            col = rng.choice(numeric)
            df.at[row, col] = df[col].mean() + rng.choice([-1, 1]) * rng.uniform(4, 6) * df[col].std()
    df["is_anomaly"] = 0
    df.loc[bad, "is_anomaly"] = 1
    df["kind"] = "normal"
    df.loc[bad, "kind"] = kinds
    for col in ("x1", "x2", "x3", "x4", "x5"):
        df[col] = df[col].round(4)
    return df


def rescore(params: Any, d: dict[str, Path], splits: tuple[str, ...] = ("val", "test")) -> dict[str, dict[str, np.ndarray]]:
    """Per split, the rows' scores by the network and by every baseline, computed as evaluate does (the
    network's head on the model inputs; baselines fitted on the normal train rows of the baseline inputs)."""
    from pipelines.data import load_split, preprocess_state
    from pipelines.evaluate import baseline_train_set, load_network
    from pipelines.files import read_json
    from pipelines.plugins import get_modality, get_task

    split_dir = d["split"]
    split, state = read_json(split_dir / "split.json"), preprocess_state(split_dir)
    modality, task = get_modality(split["kind"]), get_task(split["task"], params)
    net = task.head(load_network(d["train"] / "model.pt"), state["target"])
    scores = {s: {"network": task.outputs(net, lambda n: load_split(split_dir, n)[0], s, state)["score"]}
              for s in splits}
    factories = modality.baselines(task, split_dir, state)
    inputs = task.baseline_inputs(modality, split_dir, state)
    y_train = load_split(split_dir, "train", preprocess=False)[1]
    rows = task.train_rows(y_train)
    X_train = inputs["train"][rows] if rows is not None else inputs["train"]
    X_train, y_fit = baseline_train_set(X_train, y_train[rows] if rows is not None else y_train)
    for name in params.evaluate.baselines:
        model = factories[name]().fit(X_train, y_fit)
        for s in splits:
            scores[s][name] = task.estimator_outputs(model, inputs[s])["score"]
    return scores


def anomaly(args: argparse.Namespace, work: Path) -> tuple[list[str], list[tuple[str, str, bool]]]:
    from sklearn.metrics import roc_auc_score

    from pipelines.files import load_arrays

    runs, per_kind = [], []
    for seed in range(args.seeds):
        folder = work / f"anomaly-{seed}"
        folder.mkdir(parents=True)
        frame = anomaly_table(seed=seed)
        csv = folder / "transactions.csv"
        frame.drop(columns="kind").to_csv(csv, index=False)
        params = bench_params("anomaly", seed, args.epochs, args.set,
                              data={"source": f"csv:{csv}", "target": "is_anomaly"})
        r = run_steps(params, folder)
        r["rows"], r["anomalies"] = len(frame), int(frame["is_anomaly"].sum())
        runs.append(r)
        log_run("anomaly", seed, r)
        # per kind of anomaly: the held-out rows (val + test) of that kind against every normal held-out row
        scores = rescore(params, r["dirs"])
        index = {s: load_arrays(r["dirs"]["split"] / f"{s}.npz", "index")["index"] for s in scores}
        kinds = {s: frame["kind"].to_numpy()[index[s]] for s in scores}
        check = {n: round(float(roc_auc_score(kinds["test"] != "normal", v)), 4) for n, v in scores["test"].items()}
        reported = {"network": r["metrics"]["roc_auc"],
                    **{n: b["roc_auc"] for n, b in r["metrics"]["baselines"].items()}}
        mismatch = {n: (check[n], reported[n]) for n in check if abs(check[n] - reported[n]) > 1e-3}
        if mismatch:
            print(f"WARNING: recomputed test ROC-AUC differs from metrics.json: {mismatch}", file=sys.stderr)
        kind = np.concatenate([kinds[s] for s in scores])
        pooled = {n: np.concatenate([scores[s][n] for s in scores]) for n in scores["test"]}
        table = {}
        for k in ANOMALY_KINDS:
            sel = (kind == "normal") | (kind == k)
            if (kind == k).sum():
                table[k] = {n: float(roc_auc_score(kind[sel] != "normal", v[sel])) for n, v in pooled.items()}
                table[k]["n"] = int((kind == k).sum())
        per_kind.append(table)

    p = params
    names = ["network", *p.evaluate.baselines]
    label = {"network": f"{p.model.name} {p.model.kwargs}"}
    m0 = runs[0]["metrics"]
    lines = [f"generated table: {runs[0]['rows']} rows, {runs[0]['anomalies']} anomalies "
             f"({100 * runs[0]['anomalies'] / runs[0]['rows']:.1f} %), 5 numeric + 2 categorical columns; "
             f"train on the normal train rows; test split {m0['test_rows']} rows; {args.seeds} seed(s)", "",
             "| model | ROC-AUC | PR-AUC | F1 at the val threshold | fit s |", "|---|---|---|---|---|"]
    for name in names:
        ms = [r["metrics"] if name == "network" else r["metrics"]["baselines"][name] for r in runs]
        fit = [r["run"]["fit_seconds"] for r in runs] if name == "network" else [m["fit_seconds"] for m in ms]
        lines.append(f"| {label.get(name, name)} | {mean_spread([m['roc_auc'] for m in ms])} | "
                     f"{mean_spread([m['pr_auc'] for m in ms])} | {mean_spread([m['f1'] for m in ms])} | "
                     f"{statistics.mean(fit):.1f} |")
    lines += ["", "ROC-AUC per kind of anomaly on the held-out rows (val + test: that kind against every normal "
              "held-out row; mean over seeds; best = within 0.005 of the top):",
              "", "| kind | held-out anomalies | " + " | ".join(names) + " | best |",
              "|---|---|" + "---|" * len(names) + "---|"]
    for k in ANOMALY_KINDS:
        rows = [t[k] for t in per_kind if k in t]
        if not rows:
            continue
        means = {name: statistics.mean(r[name] for r in rows) for name in names}
        best = ", ".join(n for n in names if means[n] >= max(means.values()) - 0.005)
        lines.append(f"| {k} | {sum(r['n'] for r in rows)} | " + " | ".join(f"{means[n]:.3f}" for n in names)
                     + f" | {best} |")
    ae = [r["metrics"]["roc_auc"] for r in runs]
    iso = [r["metrics"]["baselines"]["isolation_forest"]["roc_auc"] for r in runs]
    holds = sum(a >= b - 0.02 for a, b in zip(ae, iso))
    bars = [("anomaly: AE ROC-AUC >= Isolation Forest ROC-AUC - 0.02",
             f"{statistics.mean(ae):.3f} vs {statistics.mean(iso):.3f} ({holds}/{len(ae)} seeds)",
             holds == len(ae))]
    return lines, bars


# ---------------------------------------------------------------- generation


def judge_real(params: Any, split_dir: Path) -> dict[str, dict[str, float]]:
    """The judge evaluate trains (same seed, same data: the same weights) read on the real train and test
    images, each labelled with its true class: the confident share a generator matching that data gets."""
    from models.registry import create_model
    from pipelines.data import load_split, preprocess_state
    from pipelines.files import read_json
    from pipelines.plugins import get_task

    task = get_task("generation", params)
    task.prepare(None, split_dir, preprocess_state(split_dir), read_json(split_dir / "split.json"), create_model)
    out = {}
    for name in ("train", "test"):
        X, y = load_split(split_dir, name)
        proba, _ = task.judge.predict(np.asarray(X, np.float32))
        confident = (proba.max(1) >= params.generation.confidence) & (proba.argmax(1) == y)
        out[name] = {"confident_share": float(confident.mean()),
                     "worst_class_confident_share": min(float(confident[y == c].mean()) for c in np.unique(y))}
    return out


def generation(args: argparse.Namespace, work: Path) -> tuple[list[str], list[tuple[str, str, bool]]]:
    runs = []
    for seed in range(args.seeds):
        params = bench_params("generation", seed, args.epochs, args.set)
        r = run_steps(params, work / f"generation-{seed}")
        if not args.no_reference:
            r["real"] = judge_real(params, r["dirs"]["split"])
        runs.append(r)
        log_run("generation", seed, r)
    p = params
    lines = [f"digits, conditional {p.model.name} {p.model.kwargs}, {p.optim.optimizer} lr {p.optim.lr}, "
             f"{p.train.epochs} epochs, batch {p.train.batch_size}; {p.generation.samples} samples judged by a CNN "
             f"({p.generation.judge_epochs} epochs, test accuracy "
             f"{mean_spread([r['metrics']['judge_test_accuracy'] for r in runs])}); {args.seeds} seed(s)", "",
             "| images | confident_share (p ≥ %g, requested class) | worst class | class_coverage | "
             "Fréchet distance to test | fit s |" % p.generation.confidence, "|---|---|---|---|---|---|"]
    for name in ["network", *p.evaluate.baselines]:
        ms = [r["metrics"] if name == "network" else r["metrics"]["baselines"][name] for r in runs]
        fit = [r["run"]["fit_seconds"] for r in runs] if name == "network" else [m["fit_seconds"] for m in ms]
        lines.append(f"| {p.model.name if name == 'network' else name} samples | "
                     f"{mean_spread([m['confident_share'] for m in ms])} | "
                     f"{mean_spread([m.get('worst_class_confident_share') for m in ms])} | "
                     f"{mean_spread([m['class_coverage'] for m in ms], 2)} | "
                     f"{mean_spread([m['frechet_distance'] for m in ms], 2)} | {statistics.mean(fit):.1f} |")
    if not args.no_reference:
        for name in ("train", "test"):
            fd = (mean_spread([r["metrics"]["train_test_frechet_distance"] for r in runs], 2)
                  if name == "train" else "0")
            lines.append(f"| real {name} images (reference) | "
                         f"{mean_spread([r['real'][name]['confident_share'] for r in runs])} | "
                         f"{mean_spread([r['real'][name]['worst_class_confident_share'] for r in runs])} | 1.00 | "
                         f"{fd} | – |")
    share = [r["metrics"]["confident_share"] for r in runs]
    cover = [r["metrics"]["class_coverage"] for r in runs]
    bars = [("generation: confident_share >= 0.80", f"{mean_spread(share)} ({sum(s >= 0.8 for s in share)}/"
             f"{len(share)} seeds)" + ("" if args.no_reference else "; real test images: "
                                       + mean_spread([r["real"]["test"]["confident_share"] for r in runs])),
             all(s >= 0.8 for s in share)),
            ("generation: all 10 classes covered", f"class_coverage {mean_spread(cover, 2)}",
             all(c >= 1.0 for c in cover))]
    return lines, bars


# ---------------------------------------------------------------- main


def log_run(scenario: str, seed: int, r: dict[str, Any]) -> None:
    m = r["metrics"]
    print(f"[{scenario} seed {seed}] {m['primary_metric']['name']} {m[m['primary_metric']['name']]:.4f}; "
          f"{m['verdict']}; steps {r['seconds']}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=SCENARIOS, action="append",
                        help="run only this scenario (repeatable; default: all three)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per scenario")
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs for every scenario (default: the presets')")
    parser.add_argument("--set", nargs="*", default=[], help="params overrides, e.g. optim.lr=0.001 model.latent=12")
    parser.add_argument("--no-reference", action="store_true",
                        help="generation: skip re-training the judge to read the real images (saves ~20 s a seed)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (its path is printed)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    import torch

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="unsupervised-bench-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    scenarios = [s for s in SCENARIOS if not args.only or s in args.only]
    bars, walls = [], {}
    try:
        for name in scenarios:
            started = time.perf_counter()
            lines, scenario_bars = {"embedding": embedding, "anomaly": anomaly, "generation": generation}[name](args, work)
            walls[name] = time.perf_counter() - started
            print(f"\n### {name}  (wall time {walls[name]:.0f} s)\n")
            print("\n".join(lines), flush=True)
            bars += scenario_bars
    finally:
        if args.keep:
            print(f"\nwork folder: {work}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    print(f"\n### summary  ({' + '.join(f'{n} {s:.0f} s' for n, s in walls.items())} = {sum(walls.values()):.0f} s"
          f"{'; ' + ' '.join(args.set) if args.set else ''})\n")
    print("| bar | measured | holds? |\n|---|---|---|")
    for bar, measured, holds in bars:
        print(f"| {bar} | {measured} | {'yes' if holds else 'NO'} |")


if __name__ == "__main__":
    main()
