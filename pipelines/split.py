"""Step 2 — split: stratified train/val/test, leakage check, preprocessing fitted on train only."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.cli import step_main
from pipelines.data import SPLITS, fit_preprocess
from pipelines.files import DataError, load_arrays, read_json, save_arrays, sha256_arrays, staged_outputs, write_json
from pipelines.params import Params, SplitParams, section_dict

log = logging.getLogger(__name__)


def split_indices(y: np.ndarray, p: SplitParams, stratify: bool) -> dict[str, np.ndarray]:
    """Disjoint, sorted index arrays for train/val/test."""
    from sklearn.model_selection import train_test_split

    n = len(y)
    idx = np.arange(n)
    n_test = int(round(p.test_fraction * n))
    n_val = int(round(p.val_fraction * n))
    if min(n_test, n_val, n - n_test - n_val) < 1:
        raise DataError(f"{n} rows are too few for val_fraction={p.val_fraction}, test_fraction={p.test_fraction}")
    if stratify:
        labels, counts = np.unique(y, return_counts=True)
        if counts.min() < 3:
            bad = labels[counts < 3]
            raise DataError(f"column target: class(es) {bad.tolist()} have fewer than 3 rows; cannot stratify "
                            "(set split.stratify: false or collect more data)")
    rest, test = train_test_split(idx, test_size=n_test, random_state=p.seed, stratify=y if stratify else None)
    train, val = train_test_split(rest, test_size=n_val, random_state=p.seed,
                                  stratify=y[rest] if stratify else None)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def leakage_report(X: np.ndarray, parts: dict[str, np.ndarray], max_examples: int = 5) -> dict[str, Any]:
    """Index overlap (must be zero) and exact feature duplicates that fall into two splits."""
    overlap = {f"{a}&{b}": int(len(np.intersect1d(parts[a], parts[b])))
               for i, a in enumerate(SPLITS) for b in SPLITS[i + 1:]}
    if any(overlap.values()):
        raise DataError(f"split: the same row landed in two splits: {overlap}")
    flat = X.reshape(len(X), -1)
    first_seen: dict[bytes, tuple[str, int]] = {}
    dups: list[dict[str, Any]] = []
    count = 0
    for name in SPLITS:
        for row in parts[name]:
            key = hashlib.blake2b(flat[row].tobytes(), digest_size=16).digest()
            seen = first_seen.setdefault(key, (name, int(row)))
            if seen[0] != name:
                count += 1
                if len(dups) < max_examples:
                    dups.append({"rows": [seen[1], int(row)], "splits": [seen[0], name]})
    return {"index_overlap": overlap, "cross_split_duplicates": count, "duplicate_examples": dups}


def run(params: Params, collect_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Split ``collect_dir/data.npz`` into train/val/test under ``out_dir``."""
    data = load_arrays(Path(collect_dir) / "data.npz", "X", "y")
    prof = read_json(Path(collect_dir) / "profile.json")
    X, y = data["X"], data["y"]
    stratify = params.split.stratify and prof["task"] == "classification"
    parts = split_indices(y, params.split, stratify)
    leakage = leakage_report(X, parts)
    if leakage["cross_split_duplicates"]:
        log.warning("%d rows have an exact duplicate in another split (examples: %s)",
                    leakage["cross_split_duplicates"], leakage["duplicate_examples"])
    preprocess = fit_preprocess(X[parts["train"]], prof["kind"])
    summary: dict[str, Any] = {
        "params": section_dict(params.split),
        "data_params": prof["params"],
        "stratified": stratify,
        "sizes": {k: int(len(v)) for k, v in parts.items()},
        "data_hash": prof["data_hash"],
        "hashes": {k: sha256_arrays(X[v], y[v]) for k, v in parts.items()},
        "leakage": leakage,
        "task": prof["task"],
        "kind": prof["kind"],
        "input_shape": list(X.shape[1:]),
        "value_range": prof["value_range"],
    }
    if prof["task"] == "classification":
        summary["classes"] = prof["classes"]
        summary["class_counts"] = {k: np.bincount(y[v], minlength=len(prof["classes"])).tolist()
                                   for k, v in parts.items()}
    with staged_outputs(out_dir) as tmp:
        for name, rows in parts.items():
            save_arrays(tmp / f"{name}.npz", X=X[rows], y=y[rows], index=rows)
        write_json(tmp / "preprocess.json", preprocess)
        write_json(tmp / "split.json", summary)
    log.info("split sizes %s, cross-split duplicates %d", summary["sizes"], leakage["cross_split_duplicates"])
    return {"sizes": summary["sizes"], "cross_split_duplicates": leakage["cross_split_duplicates"]}


def main() -> None:
    step_main(run, ["collect_dir", "out_dir"])


if __name__ == "__main__":
    main()
