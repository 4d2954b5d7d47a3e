"""Power and false-alarm rate of ``pipelines.drift``, measured on models built through the real steps
(collect -> split -> design -> configure -> train -> evaluate -> deploy, the ``run`` functions dvc.yaml
chains, in a temp folder with its own sqlite MLflow store; ``build_reference`` as deploy calls it):

* **tabular** -- a generated table (seeded, 20,000 rows: a normal, a log-normal, a uniform column with
  10 % missing values, a count, three categorical columns); shifts: ``x_normal`` + 0.5 reference SD, and
  a new category taking 50 % of ``region`` (a new dominant category);
* **text** -- ``../shared/data/zh_reviews_dev.csv`` (real Chinese reviews) without the hotel reviews
  (those mentioning 酒店/房间/宾馆/前台/入住); shift: the hotel reviews, another domain in the same language;
* **image** -- generated image files: sklearn's digits drawn at random places, sizes and stroke weights
  on noisy 16x16 gray backgrounds (12,000 PNGs, a ``folder:`` source, decoded as uploads are); shifts:
  10 % brighter (+26 gray levels), rotated 90 degrees, rotated by 10-20 degrees either way.

Each model holds out half (text, image) or 40 % (table) of its data as the test split: the pool the
samples are drawn from. Per scenario, 100 samples of 1,000 items are drawn without replacement from
the pool (the shifted pool for a shift, the unshifted test split for the false-alarm rate), and the
verdict of ``compare`` (Benjamini-Hochberg over all features, alpha 0.01) is counted; the features of
every pool item are computed once, by the same code a drift run uses. One sample per scenario also
goes the whole way (``pipelines.drift.run`` on a recordings folder of request JSON, as the service
records it) to show that path gives the same verdict.

    .venv/bin/python benchmarks/drift_bench.py                 # all three (~5 min on 2 cores)
    .venv/bin/python benchmarks/drift_bench.py --only tabular --reps 200

Prints Markdown tables: per scenario the detection rate (drift in any feature), the rate at which the
shifted feature itself is flagged, and the features most often flagged.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "zh_reviews_dev.csv"
HOTEL = ("酒店", "房间", "宾馆", "前台", "入住")
log = logging.getLogger("drift_bench")


# ---------------------------------------------------------------- building a model


def build(work: Path, data: dict[str, Any], arch: str, kwargs: dict[str, Any], test: float, epochs: int = 2,
          **sections: dict[str, Any]) -> dict[str, Any]:
    """All seven steps into ``work/<step>`` plus the drift reference; the loaded model and its parts."""
    from tests.helpers import run_steps
    from pipelines.drift import build_reference
    from pipelines.params import parse_params
    from serving.model import load_model_from

    params = parse_params({
        "data": data, "split": {"test_fraction": test, "val_fraction": 0.15},
        "model": {"name": arch, "kwargs": kwargs}, "optim": {"scheduler": "none", "lr": 0.003},
        "train": {"epochs": epochs, "batch_size": 128, "patience": epochs, "augment": False,
                  "experiment": "drift-bench"},
        "evaluate": {"baselines": [], "min_score": -1e9},
        "deploy": {"build_bento": False, "register": False, "model_name": f"drift-bench-{work.name}",
                   "parity_batch_sizes": [64]}, **sections})
    started = time.perf_counter()
    d = run_steps(params, work)["dirs"]
    built = time.perf_counter() - started
    started = time.perf_counter()
    reference = build_reference(d["split"], d["deploy"])
    model = load_model_from(d["deploy"], str(d["deploy"]))
    return {"model": model, "reference": reference, "dirs": d, "seconds": round(built, 1),
            "reference_seconds": round(time.perf_counter() - started, 1),
            "reference_kb": round((d["deploy"] / "reference.json").stat().st_size / 1024)}


def pool_features(built: dict[str, Any], batches: Any) -> dict[str, Any]:
    """The drift features of every item of ``batches`` (as a drift run computes them)."""
    from pipelines import drift

    model, reference = built["model"], built["reference"]
    module = drift.hooks(model.manifest["kind"])
    scorer = drift.Scorer(model, built["dirs"]["deploy"], bool(reference.get("embedding")))
    got = drift.extract(model, scorer, module, reference["context"], batches, embedding=reference.get("embedding"))
    if got.bad:
        log.warning("%d pool items refused, e.g. %s", len(got.bad), got.bad[0])
    return got.features


def split_batches(built: dict[str, Any], name: str = "test") -> Any:
    from pipelines import drift
    from pipelines.data import preprocess_state

    model, split_dir = built["model"], built["dirs"]["split"]
    module = drift.hooks(model.manifest["kind"])
    return module.reference_batches(split_dir, preprocess_state(split_dir), name, model.requests,
                                    built["reference"]["context"], 10**9)


# ---------------------------------------------------------------- sampling


def rates(built: dict[str, Any], features: dict[str, Any], target: str | None, reps: int, n: int,
          alpha: float, seed: int) -> dict[str, Any]:
    """Drift verdicts of ``reps`` samples of ``n`` pool items (without replacement)."""
    from pipelines.drift import compare, take

    rng = np.random.default_rng(seed)
    size = len(next(iter(features.values())))
    hits, target_hits, flagged = 0, 0, Counter()
    for _ in range(reps):
        rows = np.sort(rng.choice(size, min(n, size), replace=False))
        verdict = compare(built["reference"], take(features, rows), alpha)
        hits += verdict["drift"]
        target_hits += target in verdict["drifted"] if target else 0
        flagged.update(verdict["drifted"])
    return {"pool": size, "rate": hits / reps, "target_rate": target_hits / reps if target else None,
            "flagged": flagged.most_common(4)}


def recorded_run(built: dict[str, Any], items: list[Any], work: Path, alpha: float) -> dict[str, Any]:
    """``pipelines.drift.run`` on ``items`` written as the service records requests."""
    from pipelines import drift

    model = built["model"]
    folder = work / f"{model.manifest['model_name']}-v{model.manifest['version']}"
    folder.mkdir(parents=True, exist_ok=True)
    step = model.requests.max_items
    with open(folder / f"requests-20250101-000000-{os.getpid()}.jsonl", "w", encoding="utf-8") as fh:
        for i in range(0, len(items), step):
            fh.write(json.dumps({"ts": 1.7e9 + i, "route": "/predict", "items": items[i:i + step],
                                 "outputs": []}, ensure_ascii=False) + "\n")
    report = drift.run(model, built["dirs"]["deploy"], work, None, alpha, reference=built["reference"])
    return {"drift": report["drift"], "drifted": report["drifted"][:4], "items": report["current"]["items"]}


# ---------------------------------------------------------------- tabular


def table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    regions = [f"r{k:02d}" for k in range(12)]
    weights = 1.0 / np.arange(1, 13)
    df = pd.DataFrame({
        "x_normal": rng.normal(50, 10, n).round(2),
        "x_lognormal": rng.lognormal(3, 0.7, n).round(2),
        "x_uniform": rng.uniform(0, 10, n).round(3),
        "x_count": rng.poisson(3, n),
        "color": rng.choice(["red", "green", "blue"], n, p=[0.5, 0.3, 0.2]),
        "region": rng.choice(regions, n, p=weights / weights.sum()),
        "size": rng.choice(["S", "M", "L", "XL"], n),
    })
    df.loc[rng.random(n) < 0.1, "x_uniform"] = np.nan
    df.loc[rng.random(n) < 0.05, "color"] = None
    signal = (df.x_normal - 50) / 10 + 0.5 * (df.color == "red") + 0.1 * df.x_count - (df["size"] == "S")
    df["y"] = np.where(signal + rng.normal(0, 0.7, n) > 0.5, "yes", "no")
    return df


def tabular(work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    df = table(20_000, args.seed)
    df.to_csv(work / "table.csv", index=False)
    built = build(work / "tabular", {"source": f"csv:{work / 'table.csv'}", "target": "y"}, "tab_mlp", {},
                  test=0.4)
    pool = [row for batch, _ in split_batches(built) for row in batch]
    sd = built["reference"]["features"]["x_normal"]["sd"]
    shifted = [{**r, "x_normal": None if r["x_normal"] is None else r["x_normal"] + 0.5 * sd} for r in pool]
    rng = np.random.default_rng(args.seed)
    new_region = [{**r, "region": "atlantis" if rng.random() < 0.5 else r["region"]} for r in pool]
    scenarios = [("no change (test split)", pool, None), ("x_normal + 0.5 SD", shifted, "x_normal"),
                 ("region: new category in 50 % of rows", new_region, "region")]
    return run_scenarios("tabular", built, scenarios, lambda items: [(items[i:i + 1024], None)
                                                                      for i in range(0, len(items), 1024)],
                         lambda items: items, work, args)


def run_scenarios(kind: str, built: dict[str, Any], scenarios: list[tuple[str, list[Any], str | None]],
                  batches: Any, as_json: Any, work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for i, (name, items, target) in enumerate(scenarios):
        started = time.perf_counter()
        features = pool_features(built, batches(items))
        row = {"kind": kind, "scenario": name, "target": target,
               **rates(built, features, target, args.reps, args.n, args.alpha, args.seed + i)}
        sample = np.random.default_rng(args.seed + 100 + i).choice(len(items), min(args.n, len(items)), replace=False)
        row["recorded"] = recorded_run(built, as_json([items[j] for j in np.sort(sample)]),
                                       work / f"records-{kind}-{i}", args.alpha)
        row["seconds"] = round(time.perf_counter() - started, 1)
        log.info("%s / %s: %s", kind, name, row)
        out.append(row)
    out[0]["build"] = {k: built[k] for k in ("seconds", "reference_seconds", "reference_kb")}
    out[0]["build"]["reference_rows"] = built["reference"]["splits"]
    return out


# ---------------------------------------------------------------- text


def text(work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    corpus = pd.read_csv(CORPUS).dropna()
    hotel = corpus["review"].astype(str).str.contains("|".join(HOTEL))
    corpus[~hotel].to_csv(work / "reviews.csv", index=False)
    built = build(work / "text", {"source": f"csv:{work / 'reviews.csv'}", "target": "sentiment", "text": "review"},
                  "fasttext", {}, test=0.5, epochs=3)
    pool = [t for batch, _ in split_batches(built) for t in batch]
    other = [t for t in corpus.loc[hotel, "review"].astype(str) if 0 < len(t) <= 10_000]
    scenarios = [("no change (test split)", pool, None), ("another domain: hotel reviews", other, "text.surprisal")]
    return run_scenarios("text", built, scenarios, lambda items: [(items[i:i + 128], None)
                                                                   for i in range(0, len(items), 128)],
                         lambda items: items, work, args)


# ---------------------------------------------------------------- images


def digit_photos(folder: Path, n: int, seed: int) -> None:
    """``n`` 16x16 gray PNGs in ``folder/<digit>/``: a digit at a random place, size and stroke weight on a
    noisy background of random brightness."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    for k in range(10):
        (folder / str(k)).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        j = rng.integers(len(digits.images))
        size = int(rng.integers(10, 15))
        glyph = np.asarray(Image.fromarray((digits.images[j] * 255 / 16).astype(np.uint8)).resize((size, size),
                                                                                                     Image.BILINEAR))
        canvas = rng.normal(rng.uniform(20, 70), 8, (16, 16))
        top, left = rng.integers(0, 17 - size, 2)
        canvas[top:top + size, left:left + size] += glyph * rng.uniform(0.6, 0.9)
        Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).save(
            folder / str(digits.target[j]) / f"{i:06d}.png", compress_level=1)


def rotate(images: np.ndarray, seed: int) -> np.ndarray:
    from scipy.ndimage import rotate as nd_rotate

    rng = np.random.default_rng(seed)
    out = np.empty_like(images)
    for i, img in enumerate(images):
        angle = rng.uniform(10, 20) * rng.choice([-1, 1])
        out[i, 0] = nd_rotate(img[0], angle, reshape=False, order=1, mode="nearest")
    return out


def png_items(images: np.ndarray) -> list[dict[str, str]]:
    from PIL import Image

    items = []
    for i, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(np.clip(img[0], 0, 255).astype(np.uint8)).save(buf, format="PNG")
        items.append({"name": f"{i}.png", "data": base64.b64encode(buf.getvalue()).decode("ascii")})
    return items


def image(work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    digit_photos(work / "photos", 12_000, args.seed)
    built = build(work / "image", {"source": f"folder:{work / 'photos'}"}, "cnn",
                  {"channels": [8, 16], "hidden": 32, "dropout": 0.0}, test=0.5, epochs=3,
                  image={"size": [16, 16], "channels": 1})
    name = built["model"].requests.input_name
    pool = np.concatenate([feeds[name] for _, feeds in split_batches(built)])
    scenarios = [("no change (test split)", pool, None),
                 ("10 % brighter (+26 gray levels)", np.clip(pool + 26, 0, 255), "image.brightness"),
                 ("rotated 90 degrees", np.ascontiguousarray(np.rot90(pool, 1, axes=(2, 3))), "image.orientation"),
                 ("rotated 10-20 degrees", rotate(pool, args.seed), None)]
    return run_scenarios("image", built, scenarios, lambda x: [(None, {name: x[i:i + 256].astype(np.float32)})
                                                               for i in range(0, len(x), 256)],
                         png_items, work, args)


# ---------------------------------------------------------------- report


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [f"{args.reps} samples of {args.n:,} items per scenario, drawn without replacement; a sample "
             f"is flagged when any feature's Benjamini-Hochberg q <= {args.alpha}.", "",
             "| data | scenario | pool | flagged (drift) | shifted feature flagged | most flagged features "
             "(of the samples) | one recorded run |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        flagged = ", ".join(f"{name} {count}" for name, count in r["flagged"]) or "–"
        rec = r["recorded"]
        target = "–" if r["target_rate"] is None else f"{r['target_rate']:.0%} ({r['target']})"
        lines.append(f"| {r['kind']} | {r['scenario']} | {r['pool']:,} | **{r['rate']:.0%}** | {target} | "
                     f"{flagged} | {'drift' if rec['drift'] else 'no drift'} ({rec['items']:,} items) |")
    lines += ["", "| data | build (s) | reference (s) | reference.json (KiB) | reference rows |",
              "|---|---|---|---|---|"]
    for r in rows:
        if "build" in r:
            b = r["build"]
            lines.append(f"| {r['kind']} | {b['seconds']} | {b['reference_seconds']} | {b['reference_kb']} | "
                         f"{b['reference_rows']['inputs']['rows']:,} val (inputs), "
                         f"{b['reference_rows']['predictions']['rows']:,} test (predictions) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=("tabular", "text", "image"), default=["tabular", "text", "image"])
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    if "text" in args.only and not CORPUS.exists():
        print(f"text skipped: {CORPUS} not found")
        args.only.remove("text")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="drift-bench-") as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        os.chdir(tmp)  # MLflow's default artifact folder lands here, not in the project
        for kind in args.only:
            (Path(tmp) / kind).mkdir()
            rows += {"tabular": tabular, "text": text, "image": image}[kind](Path(tmp) / kind, args)
    print(markdown(rows, args))


if __name__ == "__main__":
    main()
