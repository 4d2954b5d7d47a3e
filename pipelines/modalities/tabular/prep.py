"""Tabular preprocessing: a scikit-learn ColumnTransformer fitted on the train split, exported to ONNX.

Numeric columns: median imputation + standardisation. Categorical columns: index with explicit
buckets — 0 = unknown (a category never seen in train), 1 = missing (null / empty), 2.. = the
train categories — so each column's cardinality is ``len(categories) + 2``. The network takes one
float32 matrix: numeric columns first, then the category indices (the convention of
``models/tabular.py``).

The fitted transformer is saved as ``preprocess.onnx`` (skl2onnx, one input per column) and checked
against scikit-learn on the validation rows; deploy composes it in front of the network, so the
served graph maps raw records to predictions with the very preprocessing training used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.files import DataError
from pipelines.plugins import ONNX_OPSET

MISSING = "__missing__"
OUTPUT = "features"
PREPROCESS_VERSION = 1


def _transformer(numeric: list[str], categories: dict[str, list[str]]) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder, StandardScaler

    parts = []
    if numeric:
        parts.append(("num", Pipeline([("impute", SimpleImputer(strategy="median")),
                                       ("scale", StandardScaler())]), numeric))
    if categories:
        cats = list(categories)
        parts.append(("cat", Pipeline([
            # skl2onnx imputes strings only when "missing" is a string: nulls travel as ""
            ("impute", SimpleImputer(missing_values="", strategy="constant", fill_value=MISSING)),
            ("encode", OrdinalEncoder(categories=[[MISSING, *categories[c]] for c in cats],
                                      handle_unknown="use_encoded_value", unknown_value=-1, dtype=np.float32)),
        ]), cats))
    return ColumnTransformer(parts, remainder="drop", verbose_feature_names_out=False)


def _frame(df: pd.DataFrame, numeric: list[str], categorical: list[str]) -> pd.DataFrame:
    """Columns in transformer order; categorical as plain strings with "" for missing."""
    out = pd.DataFrame(index=df.index)
    for c in numeric:
        out[c] = pd.to_numeric(df[c], errors="coerce").astype(np.float64)
    for c in categorical:
        out[c] = df[c].astype("string").fillna("").astype(object)
    return out


def fit(train: pd.DataFrame, profile: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Fit on the train rows; return the transformer and its JSON state."""
    import sklearn

    cols = [c for c in profile["columns"]]
    numeric = [c["name"] for c in cols if c["type"] == "numeric"]
    categorical = [c["name"] for c in cols if c["type"] == "categorical"]
    # categories come from the train split only: a value seen only in val/test is "unknown"
    categories = {c: sorted(v for v in train[c].dropna().astype(str).unique() if v != "") for c in categorical}
    ct = _transformer(numeric, categories)
    ct.fit(_frame(train, numeric, categorical))
    state = {
        "kind": "tabular", "version": PREPROCESS_VERSION, "sklearn": sklearn.__version__,
        "numeric": numeric, "categorical": [{"name": c, "categories": categories[c]} for c in categorical],
        "cardinalities": [len(categories[c]) + 2 for c in categorical],
        "buckets": {"unknown": 0, "missing": 1, "first_category": 2},
        "feature_names": numeric + categorical, "n_features": len(numeric) + len(categorical),
        "onnx": "preprocess.onnx", "output": OUTPUT, "rows": int(len(train)),
    }
    return ct, state


def transform(ct: Any, df: pd.DataFrame, state: dict[str, Any]) -> np.ndarray:
    """float32 [N, n_features]: standardised numerics, then category indices (see module doc)."""
    numeric = state["numeric"]
    categorical = [c["name"] for c in state["categorical"]]
    missing = [c for c in numeric + categorical if c not in df.columns]
    if missing:
        raise DataError(f"missing column(s) {missing}")
    X = ct.transform(_frame(df, numeric, categorical)).astype(np.float32)
    X[:, len(numeric):] += 1.0  # encoder: unknown -1, missing 0, known 1.. -> buckets 0, 1, 2..
    return X


def to_onnx(ct: Any, state: dict[str, Any], opset: int | None = None) -> Any:
    """The fitted transformer as ONNX: one [N, 1] input per column (float or string), output
    ``features`` float32 [N, n_features], bucket shift included."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from skl2onnx import to_onnx as skl_to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    opset = opset or ONNX_OPSET
    categorical = [c["name"] for c in state["categorical"]]
    inputs = [(c, FloatTensorType([None, 1])) for c in state["numeric"]]
    inputs += [(c, StringTensorType([None, 1])) for c in categorical]
    model = skl_to_onnx(ct, initial_types=inputs, target_opset={"": opset, "ai.onnx.ml": 3})
    graph = model.graph
    # skl2onnx sanitises names ("mean radius" -> "mean_radius"); the served graph keeps the table's own
    for value, (name, _) in zip(graph.input, inputs):
        if value.name != name:
            for node in graph.node:
                node.input[:] = [name if i == value.name else i for i in node.input]
            value.name = name
    raw_out = graph.output[0].name
    shift = np.array([0.0] * len(state["numeric"]) + [1.0] * len(categorical), np.float32)[None, :]
    graph.initializer.append(numpy_helper.from_array(shift, name="bucket_shift"))
    graph.node.append(helper.make_node("Cast", [raw_out], ["features_raw_f32"], to=TensorProto.FLOAT))
    graph.node.append(helper.make_node("Add", ["features_raw_f32", "bucket_shift"], [OUTPUT]))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [None, state["n_features"]]))
    onnx.checker.check_model(model, full_check=True)
    return model


def onnx_feeds(df: pd.DataFrame, state: dict[str, Any]) -> dict[str, np.ndarray]:
    """Inputs of preprocess.onnx (or the composed served graph) for the rows of ``df``."""
    feeds = {c: pd.to_numeric(df[c], errors="coerce").to_numpy(np.float32).reshape(-1, 1) for c in state["numeric"]}
    for col in state["categorical"]:
        c = col["name"]
        feeds[c] = df[c].astype("string").fillna("").to_numpy(dtype=object).reshape(-1, 1)
    return feeds


def check_onnx(model: Any, ct: Any, df: pd.DataFrame, state: dict[str, Any], atol: float = 1e-5) -> float:
    """Max |ONNX - scikit-learn| on ``df``'s rows; raises if they disagree (export checks itself)."""
    import tempfile

    from serving.runtime import make_session

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.onnx"
        path.write_bytes(model.SerializeToString())
        got = make_session(path).run([OUTPUT], onnx_feeds(df, state))[0]
    want = transform(ct, df, state)
    diff = float(np.abs(got - want).max()) if len(df) else 0.0
    if not diff <= atol:
        raise DataError(f"preprocess.onnx disagrees with scikit-learn by {diff:.3g} (> {atol:g})")
    return diff
