"""Step 2 — split: stratified train/val/test, leakage check, preprocessing fitted on train only.

Generic over plug-ins: the modality (``kind`` in profile.json) loads the collected rows and fits its
preprocessing on the train rows; the task encodes the targets and says what to stratify on. Writes
``{train,val,test}.npz`` (``X`` model inputs, ``y`` encoded targets, ``index`` collected rows, and the
modality's per-row extras), ``preprocess.json`` (the modality's state, ``modality``, and the task's
``target`` state), ``split.json`` and the modality's own files.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.cli import step_main
from pipelines.files import DataError, read_json, save_arrays, sha256_arrays, staged_outputs, write_json
from pipelines.params import Params, SplitParams, section_dict
from pipelines.plugins import SPLITS, get_modality, get_task

log = logging.getLogger(__name__)


def split_indices(y: np.ndarray, p: SplitParams, stratify: bool, what: str = "strata",
                  names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Disjoint, sorted index arrays for train/val/test; ``what``/``names``: what ``y`` holds (the
    target's classes, by name) for the error when a stratum is too small."""
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
            small = {(names[int(v)] if names and 0 <= int(v) < len(names) else v.item()): int(c)
                     for v, c in zip(labels, counts) if c < 3}
            raise DataError(f"{what}: {small} (value: rows) have fewer than 3 rows, so they cannot be in train, val "
                            "and test alike; drop or merge those rows, or set split.stratify: false")
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
    by_split = {name: 0 for name in SPLITS[1:]}
    for name in SPLITS:
        for row in parts[name]:
            key = hashlib.blake2b(flat[row].tobytes(), digest_size=16).digest()
            seen = first_seen.setdefault(key, (name, int(row)))
            if seen[0] != name:
                by_split[name] += 1
                if len(dups) < max_examples:
                    dups.append({"rows": [seen[1], int(row)], "splits": [seen[0], name]})
    # by_split: rows of val (test) whose exact duplicate is in an earlier split (train; train or val)
    return {"index_overlap": overlap, "cross_split_duplicates": sum(by_split.values()),
            "cross_split_duplicates_by_split": by_split, "duplicate_examples": dups}


def run(params: Params, collect_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Split the collected dataset into train/val/test under ``out_dir``."""
    collect_dir, out_dir = Path(collect_dir), Path(out_dir)
    prof = read_json(collect_dir / "profile.json")
    modality, task = get_modality(prof["kind"]), get_task(prof["task"], params)
    loaded = modality.load(collect_dir, prof)
    y = task.encode_targets(loaded.targets, prof, loaded.where)
    strata, stratified_on = task.strata(y)
    stratify = params.split.stratify
    classes = prof.get("classes") if stratified_on == "classes" else None
    target = f"column {prof['target']!r}: " if prof.get("target") else ""
    what = f"{target}class(es)" if classes else f"stratify on {stratified_on}"
    parts = split_indices(strata, params.split, stratify, what, classes)
    leakage = leakage_report(loaded.keys, parts)
    if leakage["cross_split_duplicates"]:
        log.warning("%d rows have an exact duplicate in another split (examples: %s)",
                    leakage["cross_split_duplicates"], leakage["duplicate_examples"])
    with staged_outputs(out_dir) as tmp:
        fitted = modality.fit(params, loaded, parts, prof, tmp)
        state = {"modality": modality.name, **fitted.state, "target": task.fit_targets(y[parts["train"]])}
        summary: dict[str, Any] = {
            "params": section_dict(params.split), "data_params": prof["params"], "stratified": stratify,
            "stratified_on": stratified_on if stratify else None,
            "sizes": {k: int(len(v)) for k, v in parts.items()}, "data_hash": prof["data_hash"],
            "hashes": {k: sha256_arrays(loaded.keys[v], y[v]) for k, v in parts.items()}, "leakage": leakage,
            "task": task.name, "kind": modality.name, "value_range": prof.get("value_range"),
            **fitted.summary, **task.split_summary(y, parts, prof),
        }
        for name, rows in parts.items():
            extras = {k: v[rows] for k, v in fitted.extras.items()}
            if fitted.X is not None:  # None: the modality saved each split's inputs itself (e.g. a memmap)
                extras["X"] = fitted.X[rows]
            save_arrays(tmp / f"{name}.npz", y=y[rows], index=rows, **extras)
        write_json(tmp / "preprocess.json", state)
        write_json(tmp / "split.json", summary)
    log.info("split sizes %s (stratified on %s), input %s, cross-split duplicates %d", summary["sizes"],
             summary["stratified_on"], summary["input_shape"], leakage["cross_split_duplicates"])
    return {"sizes": summary["sizes"], "cross_split_duplicates": leakage["cross_split_duplicates"]}


def main() -> None:
    step_main(run, ["collect_dir", "out_dir"])


if __name__ == "__main__":
    main()
