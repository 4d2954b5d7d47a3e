"""Step 1 — collect: load the configured source, validate it, write the dataset and its profile.

Arrays (images) -> ``data.npz`` (X, y) + ``profile.json``. Tables -> ``data.parquet`` (the kept
feature columns in their original order, numeric as float64 and categorical as the pandas
``string`` dtype, then the target: class-label text or float64) + ``profile.json`` (per-column
types and stats, dropped columns and why, target summary, data hash); see ``pipelines.tabular``.
Texts (``data.text`` set) -> ``data.parquet`` (``text``, ``label``) + ``profile.json`` (classes,
script, lengths, dropped rows); see ``pipelines.text``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.cli import step_main
from pipelines.files import save_arrays, sha256_arrays, staged_outputs, write_json
from pipelines.params import Params, section_dict
from pipelines.sources import Dataset, Table, TextTable, load_source, validate_dataset

log = logging.getLogger(__name__)


def profile(ds: Dataset, task: str, checks: list[str]) -> dict[str, Any]:
    """Schema, size, class balance and the checks that passed."""
    prof: dict[str, Any] = {
        "source": ds.origin,
        "task": task,
        "kind": ds.kind,
        "rows": int(len(ds.X)),
        "schema": {
            "features": {"shape": list(ds.X.shape[1:]), "dtype": str(ds.X.dtype)},
            "target": {"dtype": str(ds.y.dtype)},
        },
        "value_range": list(ds.value_range) if ds.value_range else None,
        "observed_range": [float(ds.X.min()), float(ds.X.max())],
        "data_hash": sha256_arrays(ds.X, ds.y),
        "checks_passed": checks,
    }
    if task == "classification":
        labels, counts = np.unique(ds.y, return_counts=True)
        prof["classes"] = list(ds.class_names) or [str(c) for c in labels]
        prof["num_classes"] = len(prof["classes"])
        prof["class_balance"] = {str(int(c)): int(n) for c, n in zip(labels, counts)}
        prof["imbalance_ratio"] = round(float(counts.max() / counts.min()), 3)
    else:
        prof["target_stats"] = {"mean": float(ds.y.mean()), "std": float(ds.y.std()),
                                "min": float(ds.y.min()), "max": float(ds.y.max())}
    return prof


def run(params: Params, out_dir: Path) -> dict[str, Any]:
    """Load ``data.source``, validate it and write the dataset + ``profile.json`` to ``out_dir``."""
    loaded = load_source(params.data)
    if isinstance(loaded, Table):
        return _run_table(loaded, params, out_dir)
    if isinstance(loaded, TextTable):
        return _run_text(loaded, params, out_dir)
    ds = loaded
    # Array sources are classification unless told otherwise (digits refuses regression itself).
    task = "classification" if params.data.task == "auto" else params.data.task
    checks = validate_dataset(ds, task)
    prof = profile(ds, task, checks)
    prof["params"] = section_dict(params.data)
    with staged_outputs(out_dir) as tmp:
        X, y = ds.X, ds.y.astype(np.int64 if task == "classification" else np.float32)
        save_arrays(tmp / "data.npz", X=X, y=y)
        write_json(tmp / "profile.json", prof)
    log.info("collected %d rows from %s (%s)", prof["rows"], ds.origin, ", ".join(checks))
    return {"rows": prof["rows"], "data_hash": prof["data_hash"]}


def _run_table(table: Table, params: Params, out_dir: Path) -> dict[str, Any]:
    from pipelines.tabular import prepare_table, table_profile  # pandas only for tables

    prep = prepare_table(table, params.data)
    prof = table_profile(prep, params.data)
    with staged_outputs(out_dir) as tmp:
        prep.frame.to_parquet(tmp / "data.parquet", engine="pyarrow", index=False)
        write_json(tmp / "profile.json", prof)
    log.info("collected %d rows x %d features from %s: task %s, dropped %s (%s)", prof["rows"],
             len(prep.kinds), table.origin, prep.task, [d["name"] for d in prep.dropped] or "none",
             ", ".join(prep.checks))
    return {"rows": prof["rows"], "data_hash": prof["data_hash"]}


def _run_text(table: TextTable, params: Params, out_dir: Path) -> dict[str, Any]:
    from pipelines.text import prepare_texts, text_profile  # pandas + tokenizers only for texts

    prep = prepare_texts(table, params.data)
    prof = text_profile(prep, params.data)
    with staged_outputs(out_dir) as tmp:
        prep.frame.to_parquet(tmp / "data.parquet", engine="pyarrow", index=False)
        write_json(tmp / "profile.json", prof)
    log.info("collected %d texts from %s: %d classes (imbalance %.3g), script %s, %d rows dropped (%s)",
             prof["rows"], table.origin, prof["num_classes"], prof["imbalance_ratio"], prof["script"],
             prof["dropped_rows"]["total"], ", ".join(prep.checks))
    return {"rows": prof["rows"], "data_hash": prof["data_hash"]}


def main() -> None:
    step_main(run, ["out_dir"])


if __name__ == "__main__":
    main()
