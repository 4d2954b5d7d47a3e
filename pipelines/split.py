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
    """Split the collected dataset into train/val/test under ``out_dir``."""
    prof = read_json(Path(collect_dir) / "profile.json")
    if prof["kind"] == "tabular":
        return run_tabular(params, prof, Path(collect_dir), Path(out_dir))
    if prof["kind"] == "text":
        from pipelines.text import split_text  # tokenizers only for texts

        return split_text(params, prof, Path(collect_dir), Path(out_dir))
    data = load_arrays(Path(collect_dir) / "data.npz", "X", "y")
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


def _strata(y: np.ndarray, task: str, bins: int = 5) -> np.ndarray:
    """Labels to stratify on: the classes, or target quantile bins for regression."""
    if task == "classification":
        return y
    import pandas as pd

    return pd.qcut(y, q=min(bins, max(1, len(y) // 10)), labels=False, duplicates="drop").astype(np.int64)


def run_tabular(params: Params, prof: dict[str, Any], collect_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Tabular split: stratified (on classes, or target quantiles), ColumnTransformer fitted on train."""
    import pandas as pd

    from pipelines import tabular_prep

    path = collect_dir / "data.parquet"
    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    task, target = prof["task"], prof["target"]
    if task == "classification":
        classes = prof["classes"]
        y = df[target].astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy()
        if np.isnan(y.astype(np.float64)).any():
            raise DataError(f"{path}: column {target}: labels outside profile classes {classes}")
        y = y.astype(np.int64)
    else:
        y = df[target].to_numpy(np.float32)
    features = df.drop(columns=[target])
    stratify = params.split.stratify
    parts = split_indices(_strata(y, task), params.split, stratify)
    row_hash = pd.util.hash_pandas_object(features, index=False).to_numpy()[:, None]
    leakage = leakage_report(row_hash, parts)
    ct, state = tabular_prep.fit(features.iloc[parts["train"]], prof)
    model = tabular_prep.to_onnx(ct, state)
    state["onnx_check_max_abs_diff"] = tabular_prep.check_onnx(model, ct, features.iloc[parts["val"]], state)
    if task == "regression":
        y_train = y[parts["train"]]
        state["target_scaler"] = {"mean": float(y_train.mean()), "std": float(y_train.std()) or 1.0}
    X = tabular_prep.transform(ct, features, state)
    summary: dict[str, Any] = {
        "params": section_dict(params.split), "data_params": prof["params"], "stratified": stratify,
        "stratified_on": ("classes" if task == "classification" else "target quantiles") if stratify else None,
        "sizes": {k: int(len(v)) for k, v in parts.items()}, "data_hash": prof["data_hash"],
        "hashes": {k: sha256_arrays(row_hash[v], y[v]) for k, v in parts.items()}, "leakage": leakage,
        "task": task, "kind": "tabular", "target": target, "input_shape": [state["n_features"]],
        "value_range": None, "feature_names": state["feature_names"],
    }
    if task == "classification":
        summary["classes"] = prof["classes"]
        summary["class_counts"] = {k: np.bincount(y[v], minlength=len(prof["classes"])).tolist()
                                   for k, v in parts.items()}
    with staged_outputs(out_dir) as tmp:
        for name, rows in parts.items():
            save_arrays(tmp / f"{name}.npz", X=X[rows], y=y[rows], index=rows)
        df.iloc[parts["test"]].to_parquet(tmp / "test.parquet")  # raw rows: serving parity checks
        (tmp / "preprocess.onnx").write_bytes(model.SerializeToString())
        write_json(tmp / "preprocess.json", state)
        write_json(tmp / "split.json", summary)
    log.info("split sizes %s (%s), %d features, cross-split duplicates %d", summary["sizes"],
             summary["stratified_on"], state["n_features"], leakage["cross_split_duplicates"])
    return {"sizes": summary["sizes"], "cross_split_duplicates": leakage["cross_split_duplicates"]}


def main() -> None:
    step_main(run, ["collect_dir", "out_dir"])


if __name__ == "__main__":
    main()
