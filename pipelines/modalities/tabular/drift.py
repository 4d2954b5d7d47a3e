"""The tabular modality's drift features: one per column, as the model sees the raw value.

A numeric column is its raw value normalised as collect and the service normalise it (``serve.normalize``),
a missing value replaced by the train median the served graph imputes; a categorical column is its
normalised category, ``(missing)`` for a null and ``(unknown)`` for a category the model never saw
(the graph's two buckets), with the train categories always listed. The reference rows are the
validation split as ``preprocess.onnx`` encoded it (``val.npz``), mapped back to raw units with that
graph's own imputer and scaler, so both sides go through the same imputation; the test split's raw
rows (``test.parquet``) are scored for the prediction reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.drift import BATCH, Feature, Numeric, labels, sample_rows
from pipelines.modalities.tabular.serve import normalize

MISSING, UNKNOWN = "(missing)", "(unknown)"
EMBEDDING = False  # the columns themselves say what moved


def _numeric_steps(path: Path, count: int) -> tuple[list[float], list[float], list[float]]:
    """The imputed values, offsets and scales of the numeric columns in ``preprocess.onnx`` (skl2onnx's
    ``Imputer`` and ``Scaler`` over the numeric columns, in ``state["numeric"]`` order)."""
    import onnx

    if not count:
        return [], [], []
    nodes = {n.op_type: n for n in onnx.load(str(path)).graph.node if n.op_type in ("Imputer", "Scaler")}
    attrs = {(op, a.name): list(a.floats) for op, n in nodes.items() for a in n.attribute}
    fill = attrs.get(("Imputer", "imputed_value_floats"), [])
    offset, scale = attrs.get(("Scaler", "offset"), []), attrs.get(("Scaler", "scale"), [])
    if not (len(fill) == len(offset) == len(scale) == count):
        raise ValueError(f"{path}: expected an Imputer and a Scaler over {count} numeric columns")
    return fill, offset, scale


def context(split_dir: Path, state: dict[str, Any], side: Any) -> dict[str, Any]:
    """The columns as the model takes them: numeric with the imputed value, offset and scale of the
    fitted preprocessing; categorical with the train categories."""
    fill, offset, scale = _numeric_steps(Path(split_dir) / state["onnx"], len(state["numeric"]))
    columns = [{"name": c, "type": "numeric", "fill": f, "offset": o, "scale": s}
               for c, f, o, s in zip(state["numeric"], fill, offset, scale)]
    columns += [{"name": c["name"], "type": "categorical", "categories": c["categories"]} for c in state["categorical"]]
    return {"columns": columns}


def reference_batches(split_dir: Path, state: dict[str, Any], name: str, side: Any, ctx: dict[str, Any],
                      limit: int) -> Iterator[tuple[list[Any], None]]:
    """Raw rows of split ``name``: the test split as the file had them, other splits decoded from the
    encoded matrix (numbers back to raw units; category buckets back to their names)."""
    if (Path(split_dir) / f"{name}.parquet").exists():
        rows = _raw_rows(Path(split_dir) / f"{name}.parquet", [c["name"] for c in ctx["columns"]], limit)
    else:
        from pipelines.files import load_arrays

        X = load_arrays(Path(split_dir) / f"{name}.npz", "X")["X"]
        rows = _decoded_rows(X[sample_rows(len(X), limit)], ctx["columns"])
    for i in range(0, len(rows), BATCH):
        yield rows[i:i + BATCH], None


def _raw_rows(path: Path, columns: list[str], limit: int) -> list[dict[str, Any]]:
    import pandas as pd

    df = pd.read_parquet(path, columns=columns)
    df = df.iloc[sample_rows(len(df), limit)]
    # as a file's row reaches the request side: a null (NaN, pd.NA) is a missing value, numbers are Python's
    cells = {c: [None if pd.isna(v) else v.item() if isinstance(v, np.generic) else v for v in df[c].tolist()]
             for c in columns}
    return [dict(zip(columns, values)) for values in zip(*cells.values())]


def _decoded_rows(X: np.ndarray, columns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    values: dict[str, list[Any]] = {}
    for j, col in enumerate(columns):
        x = X[:, j].astype(np.float64)
        if col["type"] == "numeric":
            values[col["name"]] = (x / col["scale"] + col["offset"]).tolist()
        else:  # buckets: 0 unknown, 1 missing, 2.. the train categories
            names = [UNKNOWN, None, *col["categories"]]
            values[col["name"]] = [names[int(b)] if 0 <= b < len(names) else UNKNOWN for b in x]
    return [dict(zip(values, row)) for row in zip(*values.values())]


def features(items: list[dict[str, Any]], feeds: Any, side: Any, ctx: dict[str, Any]) -> dict[str, Feature]:
    """One feature per column (see the module doc); ``items`` are records as the request sends them."""
    out: dict[str, Feature] = {}
    for col in ctx["columns"]:
        name = col["name"]
        if col["type"] == "numeric":
            raw = [_value(item.get(name), "numeric") for item in items]
            out[name] = Numeric(np.asarray([col["fill"] if v is None else v for v in raw], np.float64))
        else:
            known = set(col["categories"])
            cats = [_value(item.get(name), "categorical") for item in items]
            out[name] = labels([MISSING if v is None else v if v in known else UNKNOWN for v in cats],
                               [*col["categories"], MISSING, UNKNOWN])
    return out


def _value(value: Any, kind: str) -> Any:
    """``normalize``; a value it refuses (the service would have) counts as missing."""
    try:
        return normalize(value, kind)
    except (TypeError, ValueError):
        return None

