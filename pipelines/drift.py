"""Drift: is what the deployed model sees now still what it was trained on?

    python -m pipelines.drift --input $DLOPS_RECORD_DIR            # recorded requests of the served model
    python -m pipelines.drift --input data/new_customers.csv       # or any file in the training format
    python -m pipelines.drift --input data/new_photos --model artifacts/deploy --out artifacts/drift

**Reference** (``build_reference``, called by deploy; ``reference.json`` beside ``model.onnx``): per-item
*features* of held-out data, summarised compactly, plus the model's predictions on the test split. A
feature is numeric (stored as a quantile sketch: the exact reference CDF at up to 257 points, and a
histogram) or categorical (counts per category, the tail merged into ``(other)``). The modality says
which features its items have (its ``drift`` module beside ``plugin.py``: table columns; text lengths,
unknown-token share, surprisal, top tokens; image brightness, contrast, channels, edges, orientation) and whether
the network's penultimate layer is part of them (``embedding.*``: the top principal components of that
layer, fitted on the reference, and the whitened distance from its centre). The input features are
taken on the **validation split**: the network, the tokenizer's vocabulary and the category lists were
fitted on train, so train rows look more familiar to the model than any new row would (fewer unknown
tokens, tighter embeddings) and would raise false alarms. Predictions are taken on the test split.

**Comparison** (``compare``): every feature of the current items against its reference -- numeric:
two-sample Kolmogorov-Smirnov on the reference sketch (both samples snapped to one grid, so a value the
preprocessing imputes is one value on both sides; evaluated at the sketch points, which can only
understate the distance: conservative); categorical: chi-squared test of homogeneity (cells with an
expected count under 5 pooled). The p-values of all features are adjusted together (Benjamini-Hochberg);
a feature drifts when its adjusted p-value is at most ``alpha`` (0.01), and the verdict is drift when any
feature does. Effect sizes ride along: KS distance, PSI, mean shift in reference standard deviations,
total variation distance and the categories that moved most.

**Current items** come through the same code as the service and batch prediction: recorded requests
(``<dir>/<model_name>-v<version>/requests-*.jsonl[.gz]``, one ``{"ts", "route", "items", "outputs"}`` per
line; items are the request's JSON items) are validated by the model's request side and turned into graph
inputs by its ``to_inputs``; a table, corpus or image folder is read by ``pipelines.predict``'s readers.
Their predictions are made again by the deployed graph (recorded ``outputs`` are not read), so prediction
drift compares one model on both sides.
The report (``report.json`` and a one-page ``report.html`` with a plot per feature) goes to ``--out`` and,
unless ``--no-mlflow``, to the model's training run as ``drift/report.json`` / ``drift/report.html``.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import gzip
import html
import importlib
import io
import json
import logging
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

REFERENCE = "reference.json"
FORMAT = "dlops-drift-reference/1"
REPORT_FORMAT = "dlops-drift-report/1"
# modality name -> the module with its drift hooks: ``context(split_dir, state, side)`` (JSON facts the
# features need, stored in the reference), ``reference_batches(split_dir, state, split, side, context, limit)``
# (a split as (raw items, graph inputs or None) batches), ``features(items, inputs, side, context)`` (name ->
# Numeric | Categorical, one value per item), ``EMBEDDING`` (add the penultimate layer) and optionally
# ``NEEDS_INPUTS`` (``features`` reads the graph inputs). The plug-in would name it itself, as it names its
# request side (``Modality.drift = "pipelines.modalities.<m>.drift"``), once plugins.py has the attribute.
DRIFT_MODULES = {"image": "pipelines.modalities.image.drift", "tabular": "pipelines.modalities.tabular.drift",
                 "text": "pipelines.modalities.text.drift"}
INPUT_SPLIT, PREDICTION_SPLIT = "val", "test"
DEFAULT_ALPHA = 0.01
MAX_REFERENCE_ROWS = 20_000  # per split; larger splits are sampled (seeded)
BATCH = 256
SKETCH_POINTS = 257
HIST_BINS = 30
TOP_CATEGORIES = 40  # categories kept by name in a profile; the rest is OTHER
MIN_EXPECTED = 5.0  # chi-squared cells expected to hold fewer items than this are pooled
EMBEDDING_PCS, EMBEDDING_WHITENED = 4, 16
OTHER, NEW, NONE = "(other)", "(new)", "(none)"
# prediction fields (as the task's ``respond`` names them) that describe the prediction distribution
PREDICTION_FIELDS = {"label": "categorical", "probability": "numeric", "value": "numeric", "score": "numeric",
                     "anomaly": "categorical", "cluster": "categorical", "distance": "numeric"}


class DriftError(RuntimeError):
    """The model, its reference or the input cannot be used (one line, exit 2)."""


# ---------------------------------------------------------------- features


@dataclass
class Numeric:
    """One number per item (NaN: none for this item, left out)."""

    values: np.ndarray

    def take(self, rows: np.ndarray) -> Numeric:
        return Numeric(self.values[rows])

    def __len__(self) -> int:
        return len(self.values)


@dataclass
class Categorical:
    """One category per item (``labels``), or a share of each of ``columns`` per item (``weights``,
    rows summing to 1: e.g. a text's tokens). ``columns``: categories always listed in a profile."""

    labels: np.ndarray | None = None
    weights: np.ndarray | None = None
    columns: list[str] | None = None

    def take(self, rows: np.ndarray) -> Categorical:
        if self.labels is not None:
            return Categorical(labels=self.labels[rows], columns=self.columns)
        return Categorical(weights=self.weights[rows], columns=self.columns)

    def __len__(self) -> int:
        return len(self.labels if self.labels is not None else self.weights)

    def totals(self) -> dict[str, float]:
        """Items per category (fractions of items for ``weights``)."""
        if self.weights is not None:
            return dict(zip(self.columns, self.weights.sum(0).tolist()))
        names, counts = np.unique(self.labels.astype(str), return_counts=True)
        return {**{c: 0.0 for c in self.columns or []}, **dict(zip(names.tolist(), counts.astype(float).tolist()))}


Feature = Numeric | Categorical


def labels(values: Iterable[Any], columns: list[str] | None = None) -> Categorical:
    return Categorical(labels=np.asarray(list(values), dtype=object), columns=columns)


def concat(parts: list[dict[str, Feature]]) -> dict[str, Feature]:
    """Features of consecutive batches -> features of all their items."""
    parts = [p for p in parts if p]
    if not parts:
        return {}
    out: dict[str, Feature] = {}
    for name, first in parts[0].items():
        if isinstance(first, Numeric):
            out[name] = Numeric(np.concatenate([p[name].values for p in parts]).astype(np.float64))
        elif first.labels is not None:
            out[name] = Categorical(labels=np.concatenate([p[name].labels for p in parts]), columns=first.columns)
        else:
            out[name] = Categorical(weights=np.concatenate([p[name].weights for p in parts]), columns=first.columns)
    return out


def take(features: dict[str, Feature], rows: np.ndarray) -> dict[str, Feature]:
    """The same features for a subset of the items (a benchmark's repeated samples)."""
    return {name: f.take(rows) for name, f in features.items()}


def sample_rows(n: int, limit: int, seed: int = 0) -> np.ndarray:
    """All row indices, or a sorted seeded sample of ``limit`` of them."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


# ---------------------------------------------------------------- profiles


def _grid(values: np.ndarray) -> float:
    """The rounding step of a numeric feature: 1e-5 of its spread (a power of ten), so float32/float64
    copies of one value (an imputed median, a pixel) compare equal."""
    spread = float(np.std(values)) or float(np.abs(values).max()) or 1.0
    return 10.0 ** (math.floor(math.log10(spread)) - 5)


def _ecdf(sorted_values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Share of the values <= each x."""
    return np.searchsorted(sorted_values, x, side="right") / max(len(sorted_values), 1)


def profile_numeric(feature: Numeric) -> dict[str, Any]:
    v = feature.values[np.isfinite(feature.values)]
    if not len(v):
        return {"type": "numeric", "n": 0}
    grid = _grid(v)
    steps = np.sort(np.round(v / grid))  # whole grid steps (see ks_test)
    x = np.unique(steps)
    if len(x) > SKETCH_POINTS:
        x = np.unique(np.quantile(steps, np.linspace(0, 1, SKETCH_POINTS), method="inverted_cdf"))
    cdf = _ecdf(steps, x)
    v, x = steps * grid, x * grid
    edges = np.linspace(v[0], v[-1], HIST_BINS + 1) if v[-1] > v[0] else np.array([v[0] - 0.5, v[0] + 0.5])
    digits = max(0, -int(math.floor(math.log10(grid))))
    return {"type": "numeric", "n": int(len(v)), "grid": grid, "mean": float(v.mean()), "sd": float(v.std()),
            "min": float(v[0]), "max": float(v[-1]),
            "sketch": {"x": np.round(x, digits).tolist(), "cdf": np.round(cdf, 7).tolist()},
            "hist": {"edges": edges.tolist(), "counts": np.histogram(v, edges)[0].tolist()}}


def profile_categorical(feature: Categorical) -> dict[str, Any]:
    totals = feature.totals()
    declared = list(feature.columns or [])
    rest = sorted((c for c in totals if c not in declared), key=lambda c: (-totals[c], c))
    named = declared + rest[:max(0, TOP_CATEGORIES - len(declared))]
    counts = [totals.get(c, 0.0) for c in named]
    tail = sum(totals[c] for c in rest if c not in named)
    if tail:
        named, counts = [*named, OTHER], [*counts, tail]
    return {"type": "categorical", "n": int(len(feature)), "categories": named,
            "counts": [round(c, 4) for c in counts]}


def profile(features: dict[str, Feature], group: str) -> dict[str, dict[str, Any]]:
    """Each feature's reference profile, tagged with its group (``input`` / ``prediction``)."""
    return {name: {"group": group, **(profile_numeric(f) if isinstance(f, Numeric) else profile_categorical(f))}
            for name, f in features.items()}


# ---------------------------------------------------------------- tests


def ks_test(ref: dict[str, Any], feature: Numeric) -> dict[str, Any]:
    """Two-sample KS between the current values and the reference sketch, plus effect sizes."""
    from scipy.stats import kstwo

    v = feature.values[np.isfinite(feature.values)]
    n, m = len(v), ref["n"]
    if not n or not m:
        return {"test": "ks", "n": n, "statistic": None, "p_value": None, "effect": {}}
    # compared in whole grid steps: exact, where snapped floats may differ in their last bit
    grid = ref["grid"]
    v, x = np.sort(np.round(v / grid)), np.round(np.asarray(ref["sketch"]["x"]) / grid)
    f_ref = np.asarray(ref["sketch"]["cdf"])
    f_cur = _ecdf(v, x)
    below = np.searchsorted(v, x[0], side="left") / n  # current mass under the reference minimum
    d = float(max(np.abs(f_cur - f_ref).max(), below))
    p = float(kstwo.sf(d, max(1, round(n * m / (n + m)))))
    mean, sd = float(v.mean()) * grid, float(v.std()) * grid
    effect = {"ks": round(d, 6), "psi": round(_psi_numeric(x, f_ref, f_cur), 6),
              "mean_shift_sd": round((mean - ref["mean"]) / ref["sd"], 6) if ref["sd"] > 0 else None,
              "mean": mean, "sd": sd, "reference_mean": ref["mean"], "reference_sd": ref["sd"]}
    return {"test": "ks", "n": n, "statistic": d, "p_value": p, "effect": effect}


def _psi_numeric(x: np.ndarray, f_ref: np.ndarray, f_cur: np.ndarray) -> float:
    """PSI over the reference deciles (fewer bins where the reference has ties)."""
    cut = np.unique(np.clip(np.searchsorted(f_ref, np.arange(1, 10) / 10), 0, len(x) - 1))
    ref = np.diff(np.concatenate([[0.0], f_ref[cut], [1.0]]))
    cur = np.diff(np.concatenate([[0.0], f_cur[cut], [1.0]]))
    return psi(ref, cur)


def psi(ref: np.ndarray, cur: np.ndarray, eps: float = 1e-4) -> float:
    """Population stability index of two distributions over the same bins."""
    r = np.clip(ref / max(ref.sum(), 1e-12), eps, None)
    c = np.clip(cur / max(cur.sum(), 1e-12), eps, None)
    return float(((c - r) * np.log(c / r)).sum())


def chi2_test(ref: dict[str, Any], feature: Categorical) -> dict[str, Any]:
    """Chi-squared test of homogeneity of the current counts against the reference's, plus effect sizes."""
    from scipy.stats import chi2_contingency

    cats, ref_counts = list(ref["categories"]), [float(c) for c in ref["counts"]]
    totals = feature.totals()
    cur_counts = [totals.pop(c, 0.0) for c in cats]
    unseen = {c: n for c, n in totals.items() if n}
    if unseen:  # categories the profile does not name: its tail, or new
        if OTHER in cats:
            cur_counts[cats.index(OTHER)] += sum(unseen.values())
        else:
            cats, ref_counts, cur_counts = [*cats, NEW], [*ref_counts, 0.0], [*cur_counts, sum(unseen.values())]
    r, c = np.asarray(ref_counts), np.asarray(cur_counts)
    n, m = float(c.sum()), float(r.sum())
    if not n or not m:
        return {"test": "chi2", "n": int(n), "statistic": None, "p_value": None, "effect": {}}
    table = _pooled(np.stack([r, c]))
    stat, p = (0.0, 1.0) if table.shape[1] < 2 else (float(v) for v in chi2_contingency(table, correction=False)[:2])
    share_r, share_c = r / m, c / n
    moved = np.argsort(-np.abs(share_c - share_r), kind="stable")[:3]
    effect = {"psi": round(psi(r, c), 6), "tvd": round(float(0.5 * np.abs(share_c - share_r).sum()), 6),
              "top_changes": [{"category": cats[i], "reference": round(float(share_r[i]), 4),
                               "current": round(float(share_c[i]), 4)} for i in moved],
              "unseen": dict(sorted(unseen.items(), key=lambda kv: -kv[1])[:5])}
    return {"test": "chi2", "n": int(round(n)), "statistic": stat, "p_value": p, "effect": effect}


def _pooled(table: np.ndarray) -> np.ndarray:
    """The 2 x k table with empty columns dropped and the columns expected to hold fewer than
    ``MIN_EXPECTED`` items in either row pooled into one."""
    table = table[:, table.sum(0) > 0]
    rows = table.sum(1)
    expected = table.sum(0) * rows.min() / rows.sum()
    small = expected < MIN_EXPECTED
    if small.sum() < 2:
        return table
    return np.concatenate([table[:, ~small], table[:, small].sum(1, keepdims=True)], axis=1)


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Adjusted p-values (q-values) controlling the false discovery rate over all features."""
    p = np.asarray(p, float)
    n = len(p)
    if not n:
        return p
    order = np.argsort(p)
    scaled = p[order] * n / np.arange(1, n + 1)
    q = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.clip(q, 0, 1)
    return out


def compare(reference: dict[str, Any], features: dict[str, Feature], alpha: float = DEFAULT_ALPHA) -> dict[str, Any]:
    """Test every reference feature the current items have; the verdict over all of them."""
    rows = []
    for name, ref in reference["features"].items():
        feature = features.get(name)
        if feature is None:
            continue
        tested = ks_test(ref, feature) if ref["type"] == "numeric" else chi2_test(ref, feature)
        rows.append({"name": name, "group": ref["group"], "type": ref["type"], **tested})
    ps = np.asarray([r["p_value"] if r["p_value"] is not None else 1.0 for r in rows])
    for row, q in zip(rows, benjamini_hochberg(ps)):
        row["q_value"] = float(q)
        row["drift"] = bool(row["p_value"] is not None and q <= alpha)
    rows.sort(key=lambda r: (not r["drift"], r["q_value"], r["name"]))
    drifted = [r["name"] for r in rows if r["drift"]]
    groups = {r["group"] for r in rows if r["drift"]}
    return {"alpha": alpha, "correction": "benjamini-hochberg", "tests": len(rows), "drift": bool(drifted),
            "input_drift": "input" in groups, "prediction_drift": "prediction" in groups, "drifted": drifted,
            "features": rows}


# ---------------------------------------------------------------- the network's penultimate layer


def penultimate(graph: Any, output: str) -> str | None:
    """The tensor feeding the graph's last linear layer (``Gemm``, or ``MatMul`` [+ ``Add``]) that makes
    ``output``; None for a graph that does not end in one."""
    producers = {name: node for node in graph.node for name in node.output}
    node = producers.get(output)
    while node is not None and node.op_type in ("Identity", "Cast"):
        node = producers.get(node.input[0])
    if node is not None and node.op_type == "Add":
        node = next((producers[i] for i in node.input if i in producers and producers[i].op_type == "MatMul"), None)
    if node is None or node.op_type not in ("Gemm", "MatMul"):
        return None
    return node.input[0]


class Scorer:
    """The deployed graph as loaded (``serving.model.LoadedModel``); with ``embedding``, a copy of it that
    also answers its penultimate layer (rows flattened), in the same run."""

    def __init__(self, model: Any, model_dir: Path, embedding: bool) -> None:
        self.model, self.session, self.embedding = model, model.session, None
        if embedding:
            self._expose(Path(model_dir) / model.manifest["onnx_file"])

    def _expose(self, path: Path) -> None:
        import onnx

        from serving.runtime import make_session

        proto = onnx.load(str(path))
        name = penultimate(proto.graph, self.model.output_name)
        if name is None or name in {o.name for o in proto.graph.output}:
            log.info("no penultimate layer found in %s: no embedding features", path.name)
            return
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        with tempfile.TemporaryDirectory(prefix="dlops-drift-") as tmp:
            onnx.save(proto, str(Path(tmp) / "model.onnx"))
            self.session = make_session(Path(tmp) / "model.onnx")
        self.embedding = name

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        names = [self.model.output_name] + ([self.embedding] if self.embedding else [])
        got = self.session.run(names, feeds)
        emb = got[1].reshape(len(got[1]), -1).astype(np.float64) if self.embedding else None
        return got[0], emb


def fit_embedding(emb: np.ndarray) -> dict[str, Any] | None:
    """Principal axes of the reference embeddings (centre, top components, their standard deviations)."""
    if emb is None or len(emb) < 3:
        return None
    mean = emb.mean(0)
    _, s, vt = np.linalg.svd(emb - mean, full_matrices=False)
    sd = s / math.sqrt(len(emb) - 1)
    keep = min(EMBEDDING_WHITENED, int((sd > 1e-6 * max(sd[0], 1e-12)).sum()))
    if keep < 1:
        return None
    return {"dim": int(emb.shape[1]), "mean": mean.tolist(), "components": vt[:keep].tolist(),
            "sd": sd[:keep].tolist()}


def embedding_features(emb: np.ndarray, spec: dict[str, Any]) -> dict[str, Feature]:
    z = (emb - np.asarray(spec["mean"])) @ np.asarray(spec["components"]).T
    white = z / np.asarray(spec["sd"])
    out: dict[str, Feature] = {f"embedding.pc{k + 1}": Numeric(z[:, k]) for k in range(min(EMBEDDING_PCS, z.shape[1]))}
    out["embedding.distance"] = Numeric(np.sqrt((white ** 2).sum(1)))
    return out


# ---------------------------------------------------------------- from items to features


def hooks(kind: str) -> ModuleType:
    """The modality's drift module (``DRIFT_MODULES``)."""
    module = DRIFT_MODULES.get(kind)
    if module is None:
        raise DriftError(f"no drift features for {kind!r} models (known: {', '.join(sorted(DRIFT_MODULES))})")
    return importlib.import_module(module)


def prediction_features(rows: list[dict[str, Any]], manifest: dict[str, Any]) -> dict[str, Feature]:
    """The task's predictions (``respond`` rows) as features ``prediction.<field>``."""
    out: dict[str, Feature] = {}
    for name, kind in PREDICTION_FIELDS.items():
        if not rows or name not in rows[0]:
            continue
        values = [r.get(name) for r in rows]
        if kind == "numeric":
            out[f"prediction.{name}"] = Numeric(np.asarray([np.nan if v is None else float(v) for v in values]))
        else:
            shown = [NONE if v is None else str(v).lower() if isinstance(v, bool) else str(v) for v in values]
            declared = [str(c) for c in manifest.get("classes") or []] if name == "label" else None
            out[f"prediction.{name}"] = labels(shown, declared)
    return out


class _Items:
    """Validation of a request side's raw JSON items, as ``pipelines.predict`` validates a table's rows."""

    def __init__(self, model: Any) -> None:
        from pipelines.predict import Adapter

        class Recorded(Adapter):  # items come as JSON: no file behind them
            def _table(self, path: Path) -> None:
                return None

        self.adapter = Recorded(model, Path("."), None)

    def inputs(self, items: list[Any]) -> tuple[Any, list[int], list[tuple[int, str]]]:
        return self.adapter.inputs(items)


@dataclass
class Extracted:
    features: dict[str, Feature]
    embeddings: np.ndarray | None
    items: int
    bad: list[tuple[int, str]]


def extract(model: Any, scorer: Scorer, module: ModuleType, context: dict[str, Any],
            batches: Iterable[tuple[list[Any] | None, dict[str, np.ndarray] | None]], inputs: bool = True,
            predictions: bool = True, embedding: dict[str, Any] | None = None) -> Extracted:
    """Features of every item of ``batches`` (raw items, and graph inputs or None: made here by the
    request side, which refuses what the service would): the modality's (``inputs``), the task's
    predictions (``predictions``), the embedding's principal components (``embedding``: the reference's
    axes). The raw embedding rows are returned too (the reference fits its axes on them)."""
    parts, embs, bad, count = [], [], [], 0
    validator = None
    for items, feeds in batches:
        if feeds is None and (predictions or scorer.embedding or getattr(module, "NEEDS_INPUTS", False)):
            validator = validator or _Items(model)
            made, kept, refused = validator.inputs(items)
            bad += [(count + j, reason) for j, reason in refused]
            count += len(items)
            if made is None:
                continue
            items, feeds = [items[k] for k in kept], made.feeds
        else:
            count += len(items) if items is not None else len(next(iter(feeds.values())))
        parts.append(_batch_features(model, scorer, module, context, items, feeds, inputs, predictions, embedding,
                                     embs))
    return Extracted(concat(parts), np.concatenate(embs) if embs else None, count, bad)


def _batch_features(model: Any, scorer: Scorer, module: ModuleType, context: dict[str, Any], items: Any,
                    feeds: dict[str, np.ndarray] | None, inputs: bool, predictions: bool,
                    embedding: dict[str, Any] | None, embs: list[np.ndarray]) -> dict[str, Feature]:
    out = dict(module.features(items, feeds, model.requests, context)) if inputs else {}
    if feeds is None or not (predictions or (inputs and scorer.embedding)):
        return out
    outputs, emb = scorer.run(feeds)
    if inputs and emb is not None:
        embs.append(emb)
        if embedding is not None:
            out.update(embedding_features(emb, embedding))
    if predictions:
        out.update(prediction_features(model.task.respond(outputs, model.manifest)[0], model.manifest))
    return out


# ---------------------------------------------------------------- the reference (deploy)


def build_reference(split_dir: Path, deploy_dir: Path, max_rows: int = MAX_REFERENCE_ROWS) -> dict[str, Any] | None:
    """Profile the held-out inputs and the test predictions of the model in ``deploy_dir`` (its
    manifest.json and model.onnx written) and write ``deploy_dir/reference.json``; returns it. None
    (nothing written) for a model drift cannot watch: its requests are not data (generation), or its
    modality has no drift features."""
    from pipelines.data import preprocess_state
    from serving.model import load_model_from

    split_dir, deploy_dir = Path(split_dir), Path(deploy_dir)
    try:  # a modality without drift hooks (e.g. a plug-in of its own) first: it may have no service either
        module = hooks(json.loads((deploy_dir / "manifest.json").read_text())["kind"])
        model = load_model_from(deploy_dir, str(deploy_dir))
        _check_speaks_data(model)
    except DriftError as exc:
        log.info("no drift reference: %s", exc)
        return None
    state = preprocess_state(split_dir)
    context = module.context(split_dir, state, model.requests)
    scorer = Scorer(model, deploy_dir, getattr(module, "EMBEDDING", False))
    batches = module.reference_batches(split_dir, state, INPUT_SPLIT, model.requests, context, max_rows)
    got = extract(model, scorer, module, context, batches, predictions=False)
    spec = fit_embedding(got.embeddings)
    features = profile({**got.features, **(embedding_features(got.embeddings, spec) if spec else {})}, "input")
    batches = module.reference_batches(split_dir, state, PREDICTION_SPLIT, model.requests, context, max_rows)
    preds = extract(model, scorer, module, context, batches, inputs=False)
    features.update(profile(preds.features, "prediction"))
    m = model.manifest
    reference = {
        "format": FORMAT, "model_name": m["model_name"], "run_id": m["run_id"], "onnx_sha256": m["onnx_sha256"],
        "kind": m["kind"], "task": m["task"],
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "splits": {"inputs": {"split": INPUT_SPLIT, "rows": got.items - len(got.bad)},
                   "predictions": {"split": PREDICTION_SPLIT, "rows": preds.items - len(preds.bad)}},
        "context": context, "embedding": spec and {**spec, "tensor": scorer.embedding}, "features": features,
    }
    (deploy_dir / REFERENCE).write_text(json.dumps(reference, separators=(",", ":")) + "\n")
    log.info("drift reference: %d input features on %d %s rows, %d prediction features on %d %s rows",
             sum(f["group"] == "input" for f in features.values()), reference["splits"]["inputs"]["rows"],
             INPUT_SPLIT, len(preds.features), reference["splits"]["predictions"]["rows"], PREDICTION_SPLIT)
    return reference


def _check_speaks_data(model: Any) -> None:
    if model.task.request_side is not None:  # e.g. generation: requests are seeds and labels, not data
        raise DriftError(f"a {model.task.name} model takes no data ({model.requests.field}), so there is no "
                         "input drift to measure")


# ---------------------------------------------------------------- current items


def _safe(part: Any) -> str:
    """A model name or version as the service's recorder names its folder (``serving/record.py``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(part)).strip("._") or "_"


def recording_files(path: Path, manifest: dict[str, Any]) -> list[Path]:
    """The recordings under ``path``: all ``*.jsonl[.gz]`` below it, only those of this model's
    ``<model_name>-v<version>`` folder when there is one."""
    own = path / f"{_safe(manifest['model_name'])}-v{_safe(manifest.get('version'))}"
    root = own if own.is_dir() else path
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith((".jsonl", ".jsonl.gz")))
    return files


def is_recording(path: Path) -> bool:
    """A recordings folder or file: its first JSON line is an object with an ``items`` list."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*.jsonl*") if p.is_file())[:1]
    for file in files:
        try:
            with _open(file) as fh:
                first = next((line for line in fh if line.strip()), "")
            return isinstance(json.loads(first).get("items"), list)
        except (OSError, ValueError, AttributeError, EOFError):
            return False
    return False


def _open(path: Path) -> Any:
    return gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(".gz") else open(path, encoding="utf-8")


@dataclass
class Recorded:
    items: list[Any]
    lines: int
    bad_lines: list[str]
    first_ts: float | None
    last_ts: float | None


def read_recordings(files: list[Path], route: str, since: float | None = None, last: int | None = None) -> Recorded:
    """The items of every recorded request to ``route`` (at or after ``since``), oldest first; the
    ``last`` most recent items only when given."""
    requests, bad, lines = [], [], 0
    for path in files:
        with _open(path) as fh:
            for no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                lines += 1
                try:
                    entry = json.loads(line)
                    ts, items = float(entry.get("ts", 0.0)), entry["items"]
                    if not isinstance(items, list):
                        raise TypeError("items is not a list")
                except (ValueError, TypeError, KeyError, AttributeError) as exc:
                    bad.append(f"{path.name}:{no}: {str(exc)[:100]}")
                    continue
                if entry.get("route", route) == route and (since is None or ts >= since):
                    requests.append((ts, items))
    requests.sort(key=lambda r: r[0])
    items = [item for _, batch in requests for item in batch]
    if last is not None:
        items = items[-last:]
    stamps = [ts for ts, _ in requests]
    return Recorded(items, lines, bad, min(stamps) if stamps else None, max(stamps) if stamps else None)


def current_batches(model: Any, path: Path, column: str | None, since: float | None,
                    last: int | None) -> tuple[Iterator[tuple[Any, Any]], dict[str, Any]]:
    """Batches of (raw items, graph inputs or None) from recordings or a training-format input, and
    what was read."""
    from pipelines.predict import PredictError, adapter_for

    if is_recording(path):
        files = [path] if path.is_file() else recording_files(path, model.manifest)
        rec = read_recordings(files, "/" + model.task.route, since, last)
        info = {"input": str(path), "format": "recordings", "files": len(files), "requests": rec.lines,
                "bad_lines": len(rec.bad_lines), "first_bad_lines": rec.bad_lines[:5],
                "from": _iso(rec.first_ts), "to": _iso(rec.last_ts)}
        step = max(1, model.requests.max_items)
        return ((rec.items[i:i + step], None) for i in range(0, len(rec.items), step)), info
    try:
        adapter = adapter_for(model, path, column)
    except PredictError as exc:
        raise DriftError(str(exc)) from None
    info = {"input": str(path), "format": "folder" if path.is_dir() else "file"}
    return _adapter_batches(adapter, info), info


def _adapter_batches(adapter: Any, info: dict[str, Any]) -> Iterator[tuple[Any, Any]]:
    info["bad"] = 0
    for chunk in adapter.chunks(BATCH):
        made, kept, refused = adapter.inputs(chunk.items) if chunk.items else (None, [], [])
        info["bad"] += len(chunk.bad) + len(refused)
        if made is not None:
            yield [chunk.items[k] for k in kept], made.feeds


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- run


def load_reference(model_dir: Path, path: Path | None = None) -> dict[str, Any]:
    """``reference.json`` (``path``, else beside the model, else below its folder: a registry download
    keeps extra files in a subfolder)."""
    candidates = [path] if path else [model_dir / REFERENCE, *sorted(model_dir.rglob(REFERENCE))]
    found = next((p for p in candidates if p is not None and p.is_file()), None)
    if found is None:
        raise DriftError(f"{path or model_dir / REFERENCE}: no drift reference (deploy writes it; or pass --reference)")
    reference = json.loads(found.read_text())
    if reference.get("format") != FORMAT:
        raise DriftError(f"{found}: not a {FORMAT} file (format {reference.get('format')!r})")
    return reference


def run(model: Any, model_dir: Path, input_path: Path, out_dir: Path | None = None, alpha: float = DEFAULT_ALPHA,
        column: str | None = None, since: float | None = None, last: int | None = None,
        reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compare the items of ``input_path`` with the model's reference; write ``report.json`` and
    ``report.html`` into ``out_dir`` (when given); return the report."""
    input_path = Path(input_path)
    if not input_path.exists():
        raise DriftError(f"{input_path}: no such file or folder")
    _check_speaks_data(model)
    reference = reference or load_reference(model_dir)
    if reference["onnx_sha256"] != model.manifest["onnx_sha256"]:
        log.warning("the reference was built for another ONNX file (sha256 %s...): predictions may differ",
                    reference["onnx_sha256"][:12])
    module = hooks(model.manifest["kind"])
    scorer = Scorer(model, model_dir, bool(reference.get("embedding")))
    batches, info = current_batches(model, input_path, column, since, last)
    got = extract(model, scorer, module, reference["context"], batches, embedding=reference.get("embedding"))
    n = got.items - len(got.bad)
    if not n:
        raise DriftError(f"{input_path}: no items the model takes")
    if n < 100:
        log.warning("only %d items: the tests can miss all but large shifts", n)
    report = _report(model, reference, compare(reference, got.features, alpha), info, n, got.bad)
    if out_dir is not None:
        write_report(report, reference, got.features, Path(out_dir))
    return report


def _report(model: Any, reference: dict[str, Any], verdict: dict[str, Any], info: dict[str, Any], n: int,
            bad: list[tuple[int, str]]) -> dict[str, Any]:
    m = model.manifest
    return {"format": REPORT_FORMAT, "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model": {k: m.get(k) for k in ("model_name", "version", "alias", "run_id", "kind", "task")},
            "reference": {"created_at": reference["created_at"], **reference["splits"]},
            "current": {**{k: v for k, v in info.items() if k != "bad"}, "items": n,
                        "bad_items": len(bad) + info.get("bad", 0),
                        "first_bad": [reason for _, reason in bad[:5]]},
            **verdict}


def write_report(report: dict[str, Any], reference: dict[str, Any], features: dict[str, Feature], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "report.html").write_text(render_html(report, reference, features), encoding="utf-8")


def log_to_mlflow(run_id: str, out: Path) -> bool:
    """Attach report.json and report.html to the model's training run (``drift/``); False when MLflow
    cannot be reached."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    try:
        from pipelines import tracking

        client = tracking.get_client()
        for name in ("report.json", "report.html"):
            client.log_artifact(run_id, str(out / name), artifact_path="drift")
    except Exception as exc:  # noqa: BLE001 - a tracking server down must not lose the report on disk
        log.warning("could not log the drift report to MLflow run %s: %s", run_id, str(exc).splitlines()[0][:200])
        return False
    log.info("logged drift/report.json and drift/report.html to MLflow run %s", run_id)
    return True


# ---------------------------------------------------------------- HTML


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plot_numeric(ref: dict[str, Any], feature: Numeric, title: str) -> str:
    from matplotlib.figure import Figure

    edges, counts = np.asarray(ref["hist"]["edges"]), np.asarray(ref["hist"]["counts"], float)
    v = feature.values[np.isfinite(feature.values)]
    width = edges[1] - edges[0]
    lo = min(edges[0], v.min()) if len(v) else edges[0]
    hi = max(edges[-1], v.max()) if len(v) else edges[-1]
    left = int(min(math.ceil((edges[0] - lo) / width), HIST_BINS))  # extra bins of the same width
    right = int(min(math.ceil((hi - edges[-1]) / width), HIST_BINS))
    wide = np.concatenate([edges[0] - width * np.arange(left, 0, -1), edges,
                           edges[-1] + width * np.arange(1, right + 1)])
    ref_counts = np.concatenate([np.zeros(left), counts, np.zeros(right)])
    cur_counts = np.histogram(np.clip(v, wide[0], wide[-1]), wide)[0].astype(float)
    fig = Figure(figsize=(4.6, 2.5))
    ax = fig.subplots()
    for c, label, color in ((ref_counts, "reference", "#1f77b4"), (cur_counts, "current", "#d62728")):
        ax.stairs(c / max(c.sum(), 1), wide, label=label, color=color, fill=label == "reference",
                  alpha=0.35 if label == "reference" else 1.0, linewidth=1.5)
    ax.set(title=title, ylabel="share of items")
    ax.legend(fontsize=7)
    return _png(fig)


def _plot_categorical(ref: dict[str, Any], feature: Categorical, title: str, top: int = 12) -> str:
    from matplotlib.figure import Figure

    totals = feature.totals()
    cats = list(ref["categories"])
    r = np.asarray(ref["counts"], float)
    c = np.asarray([totals.pop(k, 0.0) for k in cats])
    unseen = sum(totals.values())
    if unseen:
        cats, r, c = [*cats, "(not in reference)"], np.append(r, 0.0), np.append(c, unseen)
    r, c = r / max(r.sum(), 1e-12), c / max(c.sum(), 1e-12)
    show = np.argsort(-np.maximum(r, c), kind="stable")[:top]
    fig = Figure(figsize=(4.6, 2.5))
    ax = fig.subplots()
    x = np.arange(len(show))
    ax.bar(x - 0.2, r[show], 0.4, label="reference", color="#1f77b4", alpha=0.6)
    ax.bar(x + 0.2, c[show], 0.4, label="current", color="#d62728")
    ax.set_xticks(x, [str(cats[i])[:14] for i in show], rotation=45, ha="right", fontsize=7)
    ax.set(title=title, ylabel="share of items")
    ax.legend(fontsize=7)
    return _png(fig)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return html.escape(str(value))


def _effect_text(row: dict[str, Any]) -> str:
    e = row["effect"]
    if row["type"] == "numeric":
        parts = [f"KS {_fmt(e.get('ks'))}", f"PSI {_fmt(e.get('psi'))}"]
        if e.get("mean_shift_sd") is not None:
            parts.append(f"mean shift {e['mean_shift_sd']:+.2f} SD")
        return ", ".join(parts)
    moved = ", ".join(f"{html.escape(str(t['category']))} {t['reference']:.1%}&rarr;{t['current']:.1%}"
                      for t in e.get("top_changes", [])[:2])
    return f"PSI {_fmt(e.get('psi'))}, TVD {_fmt(e.get('tvd'))}; {moved}"


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>drift: {title}</title><style>
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 7px;text-align:left}} .yes{{background:#fdd}} .verdict{{font-size:1.4em}}
.grid{{display:flex;flex-wrap:wrap;gap:10px}} figure{{margin:0;border:1px solid #eee;padding:4px}}
figcaption{{font-size:12px;max-width:330px}}</style></head><body>
<h1>Drift report: {title}</h1><p class="verdict">{verdict}</p><p>{summary}</p>
<table><tr><th>feature</th><th>group</th><th>test</th><th>statistic</th><th>p</th><th>q (BH)</th><th>drift</th>
<th>effect</th></tr>{rows}</table><h2>Reference vs current</h2><div class="grid">{plots}</div></body></html>
"""


def render_html(report: dict[str, Any], reference: dict[str, Any], features: dict[str, Feature]) -> str:
    """One self-contained page: the verdict, the table of tests, a plot per feature (inline PNGs)."""
    m, cur = report["model"], report["current"]
    title = html.escape(f"{m['model_name']} v{m['version']}")
    verdict = (f"<b>DRIFT</b> in {len(report['drifted'])} of {report['tests']} features: "
               + html.escape(", ".join(report["drifted"]))) if report["drift"] else \
        f"<b>no drift</b> in {report['tests']} features"
    summary = html.escape(
        f"current: {cur['items']} items from {cur['input']} ({cur['format']}); reference: "
        f"{report['reference']['inputs']['rows']} {report['reference']['inputs']['split']} rows (inputs), "
        f"{report['reference']['predictions']['rows']} {report['reference']['predictions']['split']} rows "
        f"(predictions); a feature drifts when its Benjamini-Hochberg q <= {report['alpha']}")
    rows, plots = [], []
    for row in report["features"]:
        cls = ' class="yes"' if row["drift"] else ""
        rows.append(f"<tr{cls}><td>{html.escape(row['name'])}</td><td>{row['group']}</td><td>{row['test']}</td>"
                    f"<td>{_fmt(row['statistic'])}</td><td>{_fmt(row['p_value'])}</td><td>{_fmt(row['q_value'])}</td>"
                    f"<td>{'yes' if row['drift'] else 'no'}</td><td>{_effect_text(row)}</td></tr>")
        ref, feature = reference["features"][row["name"]], features[row["name"]]
        plot = _plot_numeric if row["type"] == "numeric" else _plot_categorical
        png = plot(ref, feature, row["name"])
        plots.append(f'<figure><img src="data:image/png;base64,{png}" alt="{html.escape(row["name"])}">'
                     f"<figcaption>{'<b>drift</b> ' if row['drift'] else ''}{_effect_text(row)}</figcaption></figure>")
    return PAGE.format(title=title, verdict=verdict, summary=summary, rows="".join(rows), plots="".join(plots))


# ---------------------------------------------------------------- entry point


def _since(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        stamp = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected unix seconds or an ISO date/time, got {text!r}") from None
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.timezone.utc)).timestamp()


def load_model(model_dir: Path | None, model_uri: str | None) -> tuple[Any, Path]:
    """The model as the service loads it (``--model`` dir, ``--model-uri``, else DLOPS_MODEL_URI /
    DLOPS_MODEL_DIR / artifacts/deploy) and its folder."""
    from serving.model import load_model_from, resolve_model_dir

    if model_dir is not None:
        folder, source = Path(model_dir).resolve(), str(model_dir)
    else:
        folder, source = resolve_model_dir({"DLOPS_MODEL_URI": model_uri} if model_uri else None)
    return load_model_from(folder, source), folder


def main(argv: list[str] | None = None) -> None:
    from pipelines.logs import setup_logging
    from serving.model import ModelLoadError

    parser = argparse.ArgumentParser(prog="python -m pipelines.drift", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, required=True,
                        help="recorded requests (a DLOPS_RECORD_DIR folder or a .jsonl[.gz] file), or a CSV/JSONL/"
                             "Parquet file or an image folder in the training format")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, help="a deployed model dir (default: as the service)")
    source.add_argument("--model-uri", help="a registry model, e.g. models:/dlops-digits@champion")
    parser.add_argument("--reference", type=Path, help="reference.json (default: beside the model)")
    parser.add_argument("--out", type=Path, default=Path("artifacts") / "drift", help="report folder")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="false discovery rate over the features")
    parser.add_argument("--column", help="the input column holding the texts or image paths")
    parser.add_argument("--since", type=_since, help="recordings from this time on (unix seconds or ISO)")
    parser.add_argument("--last", type=int, help="only the most recent N recorded items")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the report to the model's MLflow run")
    parser.add_argument("--fail-on-drift", action="store_true", help="exit 1 when drift is found")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        model, folder = load_model(args.model, args.model_uri)
        reference = load_reference(folder, args.reference)
        report = run(model, folder, args.input, args.out, args.alpha, args.column, args.since, args.last, reference)
    except (DriftError, ModelLoadError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
    if not args.no_mlflow:
        report["mlflow_logged"] = log_to_mlflow(model.manifest["run_id"], args.out)
    sys.stderr.write(f"{'DRIFT' if report['drift'] else 'no drift'} ({len(report['drifted'])} of {report['tests']} "
                     f"features): {args.out / 'report.html'}\n")
    print(json.dumps({k: report[k] for k in ("drift", "input_drift", "prediction_drift", "drifted", "tests")}
                     | {"items": report["current"]["items"], "report": str(args.out / "report.json")}))
    if args.fail_on_drift and report["drift"]:
        sys.exit(1)


if __name__ == "__main__":
    # the modalities' drift modules import ``pipelines.drift``: run that copy, not ``__main__``'s twin classes
    from pipelines import drift

    drift.main()
