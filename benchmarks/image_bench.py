"""Memory and time per stage for a large photo folder: generated 64x64 RGB PNGs (10 classes) through
collect, split, one epoch of training (design + configure + train) and evaluate, each stage in its
own process so that its peak memory is its own.

    .venv/bin/python benchmarks/image_bench.py                   # 50,000 images (~3 GB of work files)
    .venv/bin/python benchmarks/image_bench.py --images 5000     # a quick look

Prints a table: seconds, peak RSS (``ru_maxrss``: resident pages, including the memory-mapped image
cache pages the kernel can drop at any time) and peak anonymous memory (``RssAnon`` sampled every
20 ms: what the process really holds) per stage. The work folder is deleted unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("collect", "split", "train", "evaluate")


def params(work: Path, size: int) -> object:
    from pipelines.params import parse_params

    return parse_params({
        "data": {"source": f"folder:{work / 'photos'}"},
        "image": {"size": [size, size], "channels": "auto"},
        "model": {"name": "cnn", "kwargs": {"channels": [8, 16], "hidden": 32, "dropout": 0.0}},
        "optim": {"scheduler": "none", "lr": 0.003},
        "train": {"epochs": 1, "batch_size": 128, "patience": 1, "augment": "auto", "experiment": "image-bench"},
        "evaluate": {"baselines": ["logreg"], "min_score": 0.0},
    })


def generate(folder: Path, n: int, size: int, classes: int = 10, seed: int = 0) -> None:
    """``n`` PNGs in ``folder/c<k>/``: a class colour, a gradient direction and noise per image."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = rng.integers(30, 226, (classes, 3))
    ramp = np.linspace(-40, 40, size)
    for k in range(classes):
        (folder / f"c{k}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        k = i % classes
        grad = ramp[None, :, None] if k % 2 else ramp[:, None, None]
        img = colours[k][None, None, :] + grad + rng.normal(0, 12, (size, size, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"c{k}" / f"{i:06d}.png", compress_level=1)


class AnonPeak:
    """Samples ``RssAnon`` of this process every 20 ms; ``peak_mb`` after ``stop``."""

    def __init__(self) -> None:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.peak = max(self.peak, int(line.split()[1]))
            self._stop.wait(0.02)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 1024


def run_stage(stage: str, work: Path, size: int) -> dict:
    """One stage in this process (called in a child): its seconds and peak memory."""
    from pipelines import collect, configure, design, evaluate, split, train

    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    p = params(work, size)
    anon = AnonPeak()
    started = time.perf_counter()
    if stage == "collect":
        collect.run(p, work / "collect")
    elif stage == "split":
        split.run(p, work / "collect", work / "split")
    elif stage == "train":
        design.run(p, work / "split", work / "design")
        configure.run(p, work / "split", work / "design", work / "configure")
        train.run(p, work / "split", work / "design", work / "configure", work / "train")
    else:
        evaluate.run(p, work / "split", work / "train", work / "evaluate")
    seconds = time.perf_counter() - started
    return {"stage": stage, "seconds": round(seconds, 1), "peak_rss_mb": round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), "peak_anon_mb": round(anon.stop())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # internal: run one stage
    args = ap.parse_args()
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.work, args.size)))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="image-bench-"))
    try:
        started = time.perf_counter()
        if (work / "photos").exists():  # --work with images from an earlier run (--keep)
            rows = [{"stage": "generate PNGs", "seconds": "reused"}]
        else:
            generate(work / "photos", args.images, args.size)
            rows = [{"stage": f"generate {args.images} PNGs", "seconds": round(time.perf_counter() - started, 1)}]
        for stage in STAGES:
            out = subprocess.run([sys.executable, __file__, "--stage", stage, "--work", str(work), "--size",
                                  str(args.size)], cwd=ROOT, check=True, capture_output=True, text=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr, flush=True)
        profile = json.loads((work / "collect" / "profile.json").read_text())
        metrics = json.loads((work / "evaluate" / "metrics.json").read_text())
        cache_mb = (work / "collect" / "images.npy").stat().st_size / 2 ** 20
        print(f"{profile['rows']} images, {args.size}x{args.size}x{profile['image']['channels']}, "
              f"cache {cache_mb:.0f} MB; 1 epoch: test accuracy {metrics['accuracy']:.3f}\n")
        print("| stage | seconds | peak RSS (MB) | peak anonymous (MB) |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r['stage']} | {r['seconds']} | {r.get('peak_rss_mb', '')} | {r.get('peak_anon_mb', '')} |")
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
