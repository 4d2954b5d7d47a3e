"""The model card of a deployed version: Markdown under Hugging Face model-card YAML front matter.

Deploy writes ``card.md`` beside ``model.onnx`` (the Bento ships it; the service answers it at
``GET /card``) and attaches it to the registry version: a short summary as the version's description,
the card as an artifact of the version's training run (``model_card/v<version>/card.md``, named by the
version's ``model_card`` tag).

Every sentence comes from the upstream outputs: split.json (data), run.json (training cost),
metrics/report/gate.json (evaluate), parity.json and the manifest (deploy). The metrics carry 95 %
percentile-bootstrap intervals (1,000 seeded resamples of the test rows, vectorised: every resample is
a row of multinomial counts, each metric a weighted sum). Evaluate keeps no per-row test outputs, so
the card recomputes them along evaluate's own path (``task.head`` + ``task.outputs`` on the
checkpoint, which the parity gate ties to the ONNX graph) and checks that they give evaluate's value.
A share over generated samples (``confident_share``) is bootstrapped from its value and sample count
(the bootstrap of a 0/1 mean depends on nothing else). Known limitations are generated from facts:
a baseline inside the network's interval, a small test split, class imbalance, parity, a failed gate.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.files import read_json

log = logging.getLogger(__name__)

CARD_FILE = "card.md"
RESAMPLES = 1000
CI_LEVEL = 0.95
SEED = 0
CHUNK_CELLS = 2_000_000  # resamples x rows held at once (16 MB of float64 weights)
SMALL_TEST_ROWS = 500  # fewer test rows than this: named as a limitation
MIN_SLICE_ROWS = 10  # a table slice with fewer test rows is not scored
MAX_SLICE_VALUES = 30  # a column with more distinct values is not sliced (free text, ids)
MAX_NUMERIC_SLICE_VALUES = 5  # a numeric column with this few values is sliced too (flags, codes)
SILHOUETTE_MAX_ROWS = 5_000  # evaluate scores silhouette on all rows up to here (a sample beyond)
WORST = 5  # classes / slices listed
# MLflow's model_versions.description is VARCHAR(5000) (sqlite does not enforce it; MySQL/PostgreSQL do)
MAX_DESCRIPTION = 5000
SUMMARY_START, SUMMARY_END = "<!-- dlops:summary -->", "<!-- /dlops:summary -->"
# the Hugging Face pipeline tag of a (task, modality); None: the Hub has none (e.g. anomaly detection)
PIPELINE_TAGS = {("classification", "image"): "image-classification",
                 ("classification", "tabular"): "tabular-classification",
                 ("classification", "text"): "text-classification",
                 ("regression", "tabular"): "tabular-regression",
                 ("embedding", "image"): "image-feature-extraction", ("embedding", "tabular"): "feature-extraction",
                 ("embedding", "text"): "feature-extraction",
                 ("generation", "image"): "unconditional-image-generation"}


# ---------------------------------------------------------------- per-row test facts and metric kernels


@dataclass
class Rows:
    """What the metric kernels read about each test row (None: not defined for this model)."""

    truth: np.ndarray | None = None  # class / anomaly / label index, or the regression target
    label: np.ndarray | None = None  # the predicted class, flag (1 = anomaly) or cluster
    score: np.ndarray | None = None  # P(positive) or anomaly score [n]; class probabilities [n, k]
    value: np.ndarray | None = None  # a regression prediction
    embedding: np.ndarray | None = None


def rows_from_outputs(y: np.ndarray, out: dict[str, np.ndarray], rule: dict[str, Any]) -> Rows:
    """The network's test outputs (``Task.network_outputs`` keys) under its decision rule (gate.json)."""
    from pipelines.tasks.classification import decide

    labelled = not (np.issubdtype(y.dtype, np.integer) and (y < 0).any())  # -1: the unlabelled marker
    rows = Rows(truth=y if labelled and len(y) else None)
    if "proba" in out:
        proba = out["proba"]
        rows.label = decide(proba, rule.get("value"))
        rows.score = proba[:, 1] if proba.shape[1] == 2 else proba
    elif "score" in out:
        rows.score, rows.label = out["score"], (out["score"] >= rule["value"]).astype(np.int64)
    elif "z" in out:
        centroids = np.asarray(rule["centroids"], np.float64)
        rows.embedding = out["z"]
        rows.label = ((out["z"][:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    elif "pred" in out:
        rows.value = out["pred"]
    return rows


Kernel = Callable[[np.ndarray], np.ndarray]  # weights [B, n] (resample counts, or a 0/1 slice) -> values [B]


def _ratio(num: np.ndarray, den: np.ndarray, empty: float = np.nan) -> np.ndarray:
    return np.divide(num, den, out=np.full(np.shape(num), empty, dtype=np.float64), where=den > 0)


def _mean(v: np.ndarray) -> Kernel:
    v = np.asarray(v, np.float64)
    return lambda W: _ratio(W @ v, W.sum(1))


def _onehot(labels: np.ndarray, k: int) -> np.ndarray:
    return (labels[:, None] == np.arange(k)[None]).astype(np.float64)


def _per_class(truth: np.ndarray, label: np.ndarray) -> Callable[[np.ndarray], tuple[np.ndarray, ...]]:
    k = int(max(truth.max(), label.max())) + 1
    T, P = _onehot(truth, k), _onehot(label, k)
    return lambda W: (W @ (T * P), W @ T, W @ P)  # true positives, true counts, predicted counts


def _balanced_accuracy(rows: Rows) -> Kernel:
    counts = _per_class(rows.truth, rows.label)

    def kernel(W: np.ndarray) -> np.ndarray:
        tp, true, _ = counts(W)
        recall = _ratio(tp, true)
        return _ratio(np.nansum(recall, 1), np.isfinite(recall).sum(1))  # classes present in the resample

    return kernel


def _macro_f1(rows: Rows) -> Kernel:
    counts = _per_class(rows.truth, rows.label)

    def kernel(W: np.ndarray) -> np.ndarray:
        tp, true, pred = counts(W)
        present = (true + pred) > 0  # scikit-learn averages over the labels in y_true or y_pred
        return _ratio((_ratio(2 * tp, true + pred, 0.0) * present).sum(1), present.sum(1))

    return kernel


def _binary(rows: Rows, which: str) -> Kernel:
    """f1 / precision / recall of the positive class (1), zero when undefined (``zero_division=0``)."""
    t, p = (rows.truth == 1).astype(np.float64), (rows.label == 1).astype(np.float64)

    def kernel(W: np.ndarray) -> np.ndarray:
        tp, true, pred = W @ (t * p), W @ t, W @ p
        num, den = {"f1": (2 * tp, true + pred), "precision": (tp, pred), "recall": (tp, true)}[which]
        return _ratio(num, den, 0.0)

    return kernel


def _auc(positive: np.ndarray, score: np.ndarray) -> Kernel:
    """ROC-AUC as the weighted Mann-Whitney statistic (ties count half), as ``roc_auc_score``: each positive
    row's weight times the negative weight below its score, read off one cumulative sum of the negatives."""
    score = np.asarray(score, np.float64)
    pos, neg = np.flatnonzero(positive), np.flatnonzero(~np.asarray(positive, bool))
    neg = neg[np.argsort(score[neg], kind="stable")]
    below = np.searchsorted(score[neg], score[pos], side="left")
    upto = np.searchsorted(score[neg], score[pos], side="right")

    def kernel(W: np.ndarray) -> np.ndarray:
        cum = np.zeros((len(W), len(neg) + 1))
        np.cumsum(W[:, neg], axis=1, out=cum[:, 1:])
        Wp = W[:, pos]
        return _ratio((Wp * (cum[:, below] + cum[:, upto])).sum(1) / 2, Wp.sum(1) * cum[:, -1])

    return kernel


def _roc_auc(rows: Rows) -> Kernel:
    if rows.score.ndim == 1:
        return _auc(rows.truth == 1, rows.score)
    per_class = [_auc(rows.truth == c, rows.score[:, c]) for c in range(rows.score.shape[1])]  # one-vs-rest
    return lambda W: np.mean([k(W) for k in per_class], axis=0)


def _pr_auc(rows: Rows) -> Kernel:
    """Average precision: the precision at each distinct threshold (score, highest first; ties are one
    threshold) weighted by the positives it adds."""
    score = np.asarray(rows.score, np.float64)
    order = np.argsort(-score, kind="stable")
    s = score[order]
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # the last row of each run of tied scores
    pos = (rows.truth[order] == 1).astype(np.float64)

    def kernel(W: np.ndarray) -> np.ndarray:
        Ws = W[:, order]
        tp, seen = np.cumsum(Ws * pos, axis=1)[:, ends], np.cumsum(Ws, axis=1)[:, ends]
        added = np.diff(tp, axis=1, prepend=0.0)
        return _ratio((added * _ratio(tp, seen, 0.0)).sum(1), tp[:, -1])

    return kernel


def _regression(rows: Rows, which: str) -> Kernel:
    y, e = rows.truth.astype(np.float64), rows.value - rows.truth

    def kernel(W: np.ndarray) -> np.ndarray:
        n = W.sum(1)
        if which == "mae":
            return _ratio(W @ np.abs(e), n)
        if which == "rmse":
            return np.sqrt(_ratio(W @ e**2, n))
        total = W @ y**2 - _ratio((W @ y) ** 2, n)
        return 1.0 - _ratio(W @ e**2, total)

    return kernel


def _contingency(rows: Rows) -> Callable[[np.ndarray], np.ndarray]:
    k, c = int(rows.truth.max()) + 1, int(rows.label.max()) + 1
    M = _onehot(rows.truth * c + rows.label, k * c)
    return lambda W: (W @ M).reshape(len(W), k, c)


def _ari(rows: Rows) -> Kernel:
    table = _contingency(rows)

    def kernel(W: np.ndarray) -> np.ndarray:
        T = table(W)

        def pairs(x: np.ndarray) -> np.ndarray:  # pairs of rows within each cell, per resample
            return (x * (x - 1) / 2).reshape(len(W), -1).sum(1)

        index, a, b, total = pairs(T), pairs(T.sum(2)), pairs(T.sum(1)), pairs(T.sum((1, 2)))
        expected = _ratio(a * b, total)
        return _ratio(index - expected, (a + b) / 2 - expected, 1.0)

    return kernel


def _nmi(rows: Rows) -> Kernel:
    table = _contingency(rows)

    def entropy(p: np.ndarray) -> np.ndarray:
        return -(p * np.log(np.where(p > 0, p, 1.0))).reshape(len(p), -1).sum(1)

    def kernel(W: np.ndarray) -> np.ndarray:
        T = table(W)
        p = T / T.sum((1, 2), keepdims=True)
        ha, hb = entropy(p.sum(2)), entropy(p.sum(1))
        mutual = ha + hb - entropy(p)
        return _ratio(np.maximum(mutual, 0.0), (ha + hb) / 2, 1.0)

    return kernel


def _silhouette(rows: Rows) -> Kernel | None:
    from sklearn.metrics import silhouette_samples

    if len(rows.label) > SILHOUETTE_MAX_ROWS or len(np.unique(rows.label)) < 2:
        return None  # evaluate scored a sample (or 0.0): the per-row values would not give its number
    return _mean(silhouette_samples(rows.embedding, rows.label))  # per-row values held fixed


def _flag_rate_stability(rows: Rows, expected: float) -> Kernel:
    share = _mean(rows.label == 1)
    return lambda W: np.maximum(0.0, 1.0 - np.abs(share(W) - expected) / expected)


def kernels(rows: Rows, metrics: dict[str, Any]) -> dict[str, Kernel]:
    """A bootstrap kernel for each metric of ``metrics`` that these rows define."""
    has = {name: getattr(rows, name) is not None for name in ("truth", "label", "score", "value", "embedding")}
    labels = has["truth"] and has["label"]
    makers: dict[str, tuple[bool, Callable[[], Kernel | None]]] = {
        "accuracy": (labels, lambda: _mean(rows.label == rows.truth)),
        "balanced_accuracy": (labels, lambda: _balanced_accuracy(rows)),
        "macro_f1": (labels, lambda: _macro_f1(rows)),
        **{m: (labels, lambda m=m: _binary(rows, m)) for m in ("f1", "precision", "recall")},
        "roc_auc": (has["truth"] and has["score"], lambda: _roc_auc(rows)),
        "pr_auc": (has["truth"] and has["score"], lambda: _pr_auc(rows)),
        **{m: (has["truth"] and has["value"], lambda m=m: _regression(rows, m)) for m in ("r2", "rmse", "mae")},
        "ari": (labels and has["embedding"], lambda: _ari(rows)),
        "nmi": (labels and has["embedding"], lambda: _nmi(rows)),
        "silhouette": (has["embedding"], lambda: _silhouette(rows)),
        "flagged_share": (has["label"] and has["score"], lambda: _mean(rows.label == 1)),
        "flag_rate_stability": (has["label"] and "expected_share" in metrics,
                                lambda: _flag_rate_stability(rows, float(metrics.get("expected_share") or 1.0))),
    }
    out = {}
    for name, (applies, make) in makers.items():
        if applies and isinstance(metrics.get(name), float) and (kernel := make()) is not None:
            out[name] = kernel
    return out


def bootstrap(kernels: dict[str, Kernel], n: int, resamples: int = RESAMPLES, seed: int = SEED,
              level: float = CI_LEVEL) -> dict[str, dict[str, Any]]:
    """Percentile intervals of every kernel over the same ``resamples`` seeded resamples of ``n`` rows."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(resamples, CHUNK_CELLS // max(n, 1)))
    values: dict[str, list[np.ndarray]] = {name: [] for name in kernels}
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        W = np.empty((b, n))
        for i, picks in enumerate(rng.integers(0, n, size=(b, n), dtype=np.int32)):
            W[i] = np.bincount(picks, minlength=n)  # how often each row is drawn into resample i
        for name, kernel in kernels.items():
            values[name].append(kernel(W))
    tail = 50 * (1 - level)
    out = {}
    for name, parts in values.items():
        v = np.concatenate(parts)
        v = v[np.isfinite(v)]  # a resample without both classes has no ROC-AUC, say
        if len(v):
            low, high = np.percentile(v, [tail, 100 - tail])
            out[name] = {"low": float(low), "high": float(high), "resamples": int(len(v)), "level": level}
    return out


# ---------------------------------------------------------------- facts from the step outputs


def recompute_test_outputs(split_dir: Path, train_dir: Path, split: dict[str, Any]) -> tuple[np.ndarray, dict]:
    """The network's test outputs along evaluate's own path (not called for a generation task: its
    metric is a share of samples, whose interval needs no rows)."""
    from pipelines.data import load_split, preprocess_state
    from pipelines.evaluate import scored_outputs
    from pipelines.plugins import get_task

    task, state = get_task(split["task"]), preprocess_state(split_dir)
    y = load_split(split_dir, "test", preprocess=False)[1]
    return y, scored_outputs(task, Path(split_dir), Path(train_dir), state, split, ("test",))["test"]


def _share_intervals(metrics: dict[str, Any], report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``confident_share`` over the generated samples: its bootstrap needs only the value and the count."""
    n = sum(int(v.get("samples", 0)) for v in (report.get("per_class") or {}).values())
    if not isinstance(metrics.get("confident_share"), float) or n == 0:
        return {}
    hits = np.zeros(n)
    hits[:int(round(metrics["confident_share"] * n))] = 1.0
    return {**bootstrap({"confident_share": _mean(hits)}, n), "_rows": n}


def intervals(split_dir: Path, train_dir: Path, split: dict[str, Any], metrics: dict[str, Any],
              report: dict[str, Any], rule: dict[str, Any]) -> dict[str, Any]:
    """Bootstrap intervals of the test metrics, the recomputed values and the rows behind them."""
    result: dict[str, Any] = {"ci": {}, "recomputed": {}, "rows": None, "kernels": {}, "note": None}
    shares = _share_intervals(metrics, report)
    if shares:
        result["rows"] = shares.pop("_rows")
        result["ci"] = shares
        return result
    try:
        y, out = recompute_test_outputs(split_dir, train_dir, split)
    except Exception as exc:  # a card without intervals beats a deploy that fails over its documentation
        log.warning("model card: test outputs not recomputed (%s); no confidence intervals", exc)
        result["note"] = f"the test outputs could not be recomputed ({type(exc).__name__}: {exc})"
        return result
    rows = rows_from_outputs(y, out, rule)
    found = kernels(rows, metrics)
    ones = np.ones((1, len(y)))
    result.update(rows=len(y), kernels=found, row_facts=rows, ci=bootstrap(found, len(y)),
                  recomputed={name: float(kernel(ones)[0]) for name, kernel in found.items()})
    if not found:
        result["note"] = "no test metric of this task has a bootstrap kernel"
    return result


def table_slices(split_dir: Path, split: dict[str, Any], kernel: Kernel | None,
                 n: int | None) -> list[dict[str, Any]]:
    """The primary metric on each value of each categorical-looking column of a table's raw test rows
    (``test.parquet``, row-aligned with ``test.npz``), worst first."""
    path = Path(split_dir) / "test.parquet"
    if kernel is None or not path.exists():
        return []
    import pandas as pd

    df = pd.read_parquet(path)
    if len(df) != n:
        return []
    found = []
    for column in df.columns.drop([c for c in (split.get("target"), "text") if c in df.columns]):
        numeric = pd.api.types.is_numeric_dtype(df[column])
        values = (df[column].map("{:.4g}".format, na_action="ignore") if numeric else df[column].astype("string"))
        values = values.astype("string").fillna("(missing)")
        distinct = values.nunique()
        limit = MAX_NUMERIC_SLICE_VALUES if numeric else MAX_SLICE_VALUES
        if not 2 <= distinct <= limit:
            continue
        for value, count in values.value_counts().items():
            if count >= MIN_SLICE_ROWS:
                mask = (values == value).to_numpy(np.float64)[None]
                found.append({"column": str(column), "value": str(value), "rows": int(count),
                              "score": float(kernel(mask)[0])})
    return sorted(found, key=lambda s: (np.nan_to_num(s["score"], nan=np.inf), s["column"], s["value"]))


@dataclass
class Facts:
    split: dict[str, Any]
    run: dict[str, Any]
    metrics: dict[str, Any]
    report: dict[str, Any]
    gate: dict[str, Any]
    parity: dict[str, Any]
    manifest: dict[str, Any]
    stats: dict[str, Any]
    slices: list[dict[str, Any]]

    @property
    def metric(self) -> str:
        return self.gate["metric"]

    @property
    def primary_ci(self) -> dict[str, Any] | None:
        return self.stats["ci"].get(self.metric)


def gather(split_dir: Path, train_dir: Path, evaluate_dir: Path, deploy_dir: Path,
           manifest: dict[str, Any]) -> Facts:
    split_dir, evaluate_dir = Path(split_dir), Path(evaluate_dir)
    split, metrics = read_json(split_dir / "split.json"), read_json(evaluate_dir / "metrics.json")
    report, gate = read_json(evaluate_dir / "report.json"), read_json(evaluate_dir / "gate.json")
    parity_path = Path(deploy_dir) / "parity.json"
    stats = intervals(split_dir, Path(train_dir), split, metrics, report, gate.get("rule") or {})
    slices = table_slices(split_dir, split, stats["kernels"].get(gate["metric"]), stats["rows"])
    return Facts(split=split, run=read_json(Path(train_dir) / "run.json"), metrics=metrics, report=report,
                 gate=gate, parity=read_json(parity_path) if parity_path.exists() else {}, manifest=manifest,
                 stats=stats, slices=slices)


# ---------------------------------------------------------------- sentences and tables


def _num(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _ci(ci: dict[str, Any] | None) -> str:
    return f"[{ci['low']:.4f}, {ci['high']:.4f}]" if ci else "n/a"


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_num(c) if not isinstance(c, str) else c.replace("|", "\\|") for c in row) + " |"
              for row in rows]
    return "\n".join(lines)


def source_name(split: dict[str, Any]) -> str:
    """The data source without local directories (``csv:/home/me/x.csv`` -> ``csv:x.csv``)."""
    source = str(split.get("data_params", {}).get("source", "unknown"))
    scheme, _, rest = source.partition(":")
    return f"{scheme}:{Path(rest).name}" if rest and "/" in rest else source


def class_imbalance(split: dict[str, Any]) -> tuple[float, str, int] | None:
    """Largest/smallest class count on train and the smallest class (anomaly: normal vs anomaly rows)."""
    counts = (split.get("class_counts") or {}).get("train")
    names = split.get("classes") or []
    if counts is None and split.get("anomaly_counts"):
        anomalies = split["anomaly_counts"]["train"]
        counts, names = [split["sizes"]["train"] - anomalies, anomalies], ["normal", "anomaly"]
    if not counts or min(counts) == 0 or len(names) != len(counts):
        return None
    i = int(np.argmin(counts))
    return max(counts) / counts[i], names[i], int(counts[i])


def limitations(f: Facts) -> list[str]:
    """Known limitations, each generated from a fact of this version."""
    from pipelines.tasks.classification import IMBALANCED

    metric, value, ci, out = f.metric, f.gate["value"], f.primary_ci, []
    for name, res in sorted(f.metrics.get("baselines", {}).items(), key=lambda kv: -kv[1].get(metric, -np.inf)):
        b = res.get(metric)
        if b is None:
            continue
        if ci and b > ci["high"]:
            out.append(f"the {name} baseline is better here: test {metric} {b:.4f} is above the network's "
                       f"95% CI {_ci(ci)}")
        elif ci and b >= ci["low"]:
            out.append(f"the {name} baseline is as good here: its test {metric} {b:.4f} lies within the network's "
                       f"95% CI {_ci(ci)} (it fit in {_num(res.get('fit_seconds'), 2)} s)")
        elif not ci and b >= value:
            out.append(f"the {name} baseline is as good here: test {metric} {b:.4f} vs the network's {value:.4f}")
    rows = f.stats["rows"] or f.metrics.get("test_rows")
    if rows and rows < SMALL_TEST_ROWS:
        width = f", so the 95% CI of {metric} is {ci['high'] - ci['low']:.3f} wide" if ci else ""
        out.append(f"small test split: {rows} rows{width}")
    imbalance = class_imbalance(f.split)
    if imbalance and imbalance[0] >= IMBALANCED:
        ratio, smallest, count = imbalance
        out.append(f"class imbalance: the largest class has {ratio:.1f}x the rows of the smallest ('{smallest}', "
                   f"{count} train rows)")
    if f.parity:
        unit = " target standard deviations" if f.parity.get("scale", 1.0) != 1.0 else ""
        out.append(f"ONNX Runtime differs from PyTorch by up to {f.parity['max_abs_diff']:.2e}{unit} over "
                   f"{f.parity['rows']} test rows (deploy.parity_atol {f.parity['atol']:g})")
    if not f.gate["passed"]:
        out.append(f"the evaluate gate failed ({f.gate['reason']}): this version is registered as "
                   f"{f.manifest.get('alias') or 'a challenger'}, not for production traffic")
    out.extend(_data_limitations(f))
    return out


def _data_limitations(f: Facts) -> list[str]:
    out = []
    dups = f.split.get("leakage", {}).get("cross_split_duplicates", 0)
    if dups:
        out.append(f"{dups} validation/test rows have an exact duplicate in an earlier split: test scores may be "
                   "optimistic")
    if f.split.get("labelled") is False:
        out.append(f"no labels: {f.metric} only says {f.metrics['primary_metric']['why'].split(': ', 1)[-1]}")
    if "baseline_train_rows" in f.metrics:
        out.append(f.metrics["baseline_train_rows"]["why"])
    judge = f.metrics.get("judge_test_accuracy")
    if isinstance(judge, float) and judge < 0.9:
        out.append(f"the judge classifier reads real test images with accuracy {judge:.3f} only: its verdict on "
                   "generated images is no better than that")
    if f.stats["note"]:
        out.append(f"no confidence intervals: {f.stats['note']}")
    for name, again in f.stats["recomputed"].items():
        if abs(again - f.metrics[name]) > 1e-4:
            out.append(f"the recomputed test {name} ({again:.6f}) differs from evaluate's ({f.metrics[name]:.6f}): "
                       "the card's intervals may not belong to this model's evaluation")
    out.append(f"evaluated on one test split of {source_name(f.split)}; data from elsewhere (another source, "
               "period or population) may score differently")
    return out


def worst_groups(f: Facts) -> list[str]:
    """Markdown blocks: the worst classes (or clusters, samples per class) and table slices."""
    report, classes, blocks = f.report, f.split.get("classes") or [], []
    per_class = [(c, report[c]) for c in classes if isinstance(report.get(c), dict) and "f1-score" in report[c]]
    if per_class:
        worst = sorted(per_class, key=lambda kv: (kv[1]["f1-score"], kv[1]["recall"]))[:WORST]
        blocks.append(f"Worst classes by test F1 ({len(per_class)} classes):\n\n" + table(
            ["class", "precision", "recall", "F1", "test rows"],
            [[c, r["precision"], r["recall"], r["f1-score"], int(r["support"])] for c, r in worst]))
    if report.get("per_class"):
        worst = sorted(report["per_class"].items(), key=lambda kv: kv[1]["judge_agrees"])[:WORST]
        blocks.append("Worst classes of generated samples (the judge's agreement with the class):\n\n" + table(
            ["class", "samples", "judge agrees", "mean confidence"],
            [[c, r["samples"], r["judge_agrees"], r["mean_confidence"]] for c, r in worst]))
    if report.get("cluster_labels_test"):
        purity = [(c, max(mix.values()) / sum(mix.values()), max(mix, key=mix.get), sum(mix.values()))
                  for c, mix in report["cluster_labels_test"].items()]
        blocks.append("Least pure clusters (share of their most common label):\n\n" + table(
            ["cluster", "purity", "most common label", "test rows"],
            [list(p) for p in sorted(purity, key=lambda p: p[1])]))
    if report.get("confusion_at_threshold"):
        blocks.append("At the threshold: " + ", ".join(f"{k.replace('_', ' ')} {v}"
                                                       for k, v in report["confusion_at_threshold"].items()))
    if report.get("flagged_rows_mean_error_by_part"):
        blocks.append("Columns that explain flagged rows (mean reconstruction error): " + ", ".join(
            f"{k} {v:.3f}" for k, v in report["flagged_rows_mean_error_by_part"].items()))
    if f.slices:
        blocks.append(f"Worst slices of the test table by {f.metric} (per value of each categorical column, "
                      f"at least {MIN_SLICE_ROWS} rows; overall {f.gate['value']:.4f}):\n\n" + table(
                          ["column", "value", "test rows", f.metric],
                          [[s["column"], s["value"], s["rows"], s["score"]] for s in f.slices[:WORST]]))
    return blocks or ["No per-class or per-slice results for this task and data."]


def metrics_table(f: Facts) -> str:
    """Every test number of the network with its interval, the baselines side by side."""
    baselines = f.metrics.get("baselines", {})
    names = [k for k, v in f.metrics.items() if isinstance(v, float) and k != "fit_seconds"
             and not k.startswith("dl_minus_")]
    rows = [[f"**{k}**" if k == f.metric else k, f.metrics[k], _ci(f.stats["ci"].get(k)),
             *(baselines[b].get(k) for b in baselines)] for k in names]
    rows.append(["fit seconds", f.metrics.get("fit_seconds"), "",
                 *(baselines[b].get("fit_seconds") for b in baselines)])
    return table(["test metric", "network", f"{CI_LEVEL:.0%} CI", *baselines], rows)


def _list(items: list[str]) -> str:
    return "\n".join(f"- {item}" for item in items)


def _short(values: list[Any], most: int = 20) -> str:
    shown = ", ".join(str(v) for v in values[:most])
    return shown + (f", ... ({len(values)} in all)" if len(values) > most else "")


def intended_use(f: Facts) -> list[str]:
    m, split = f.manifest, f.split
    classes = split.get("classes") or []
    out_spec = m.get("output") or {}
    return [f"Task: {m['task']} on {m['kind']} data" + (f"; labels: {_short(classes)}" if classes else "")
            + (f"; target column `{split['target']}`" if split.get("target") else "") + ".",
            f"Served: `model.onnx` (ONNX Runtime) behind `POST /{m['route']}`, output `{out_spec.get('name')}` of "
            f"shape {out_spec.get('shape')}" + (f", decision threshold {m['decision_threshold']:.4g}"
                                               if isinstance(m.get("decision_threshold"), float) else "") + ".",
            f"Decided by test {f.metric}: {f.metrics['primary_metric']['why']}.",
            f"Intended for inputs like those of {source_name(split)} (the data it was trained and tested on); "
            "anything else is out of scope until it is evaluated."]


def data_section(f: Facts) -> str:
    s = f.split
    lines = [f"Source `{source_name(s)}` ({s.get('kind')} data), data hash `{s.get('data_hash', '')[:16]}`.",
             f"Split (seed {s.get('params', {}).get('seed')}, stratified on {s.get('stratified_on') or 'nothing'}): "
             + ", ".join(f"{k} {v}" for k, v in s.get("sizes", {}).items()) + " rows.",
             f"Model input shape {s.get('input_shape')}"
             + (f", features: {_short(s['feature_names'])}" if s.get("feature_names") else "") + "."]
    if s.get("anomaly_counts"):
        lines.append("Anomalies (label '" + str(s.get("anomaly_label")) + "'): " + ", ".join(
            f"{k} {v} of {s['sizes'][k]}" for k, v in s["anomaly_counts"].items()) + ".")
    if s.get("labelled") is False:
        lines.append("No labels: the target is unknown for these rows.")
    text = _list(lines)
    counts = s.get("class_counts")
    if counts and len(s.get("classes") or []) <= 30:
        text += "\n\n" + table(["class", *counts], [[c, *(counts[k][i] for k in counts)]
                                                     for i, c in enumerate(s["classes"])])
    return text


def lineage_section(f: Facts) -> str:
    m, p = f.manifest, f.parity
    lines = [f"Registered model `{m.get('model_name')}` version {m.get('version') or '(not registered)'}, alias "
             f"`{m.get('alias') or 'none'}`" + (f": {m['alias_reason']}" if m.get("alias_reason") else ""),
             f"MLflow run `{m.get('run_id')}` (experiment `{f.run.get('experiment')}`)",
             f"Git commit `{m.get('git_sha')}`", f"Data hash `{m.get('data_hash')}` "
             f"(test split `{f.split.get('hashes', {}).get('test', '')[:16]}`)",
             f"ONNX sha256 `{m.get('onnx_sha256')}`, created {m.get('created_at')}"]
    if p:
        agreement = "n/a" if p.get("label_agreement") is None else f"{p['label_agreement']:.2%}"
        lines.append(f"Parity (ONNX Runtime vs PyTorch, {p['rows']} test rows, batch sizes "
                     f"{[b['batch_size'] for b in p.get('by_batch_size', [])]}): max |diff| {p['max_abs_diff']:.2e}, "
                     f"mean {p['mean_abs_diff']:.2e}, tolerance {p['atol']:g}, label agreement {agreement}")
    return _list(lines)


def cost_section(f: Facts) -> str:
    r, export = f.run, (f.parity.get("export") or {})
    lines = [f"Network fit: {_num(r.get('fit_seconds'), 2)} s, {r.get('epochs_run')} epoch(s) (best epoch "
             f"{r.get('best_epoch')} by {r.get('best_by')}{', stopped early' if r.get('stopped_early') else ''}), "
             f"{r.get('processes', 1)} process(es), strategy {r.get('strategy')}"]
    lines += [f"Baseline {b} fit: {_num(res.get('fit_seconds'), 2)} s"
              for b, res in f.metrics.get("baselines", {}).items()]
    if export.get("seconds") is not None:
        lines.append(f"ONNX export and parity check: {export['seconds']} s")
    return _list(lines)


def summary(f: Facts) -> str:
    m, ci = f.manifest, f.primary_ci
    version = f"v{m['version']}" if m.get("version") else "(unregistered)"
    rows = f.stats["rows"] or f.metrics.get("test_rows")
    interval = f", {CI_LEVEL:.0%} CI {_ci(ci)}" if ci else ""
    limits = limitations(f)
    return (f"{m.get('model_name')} {version} ({m.get('alias') or 'no alias'}): {m['task']} on {m['kind']} data "
            f"from {source_name(f.split)}. Test {f.metric} {f.gate['value']:.4f}{interval} on {rows} rows; "
            f"{f.metrics.get('verdict', '')}. Gate {'passed' if f.gate['passed'] else 'failed'}. "
            f"Limitations: {'; '.join(limits[:3])}.")


TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ summary_start }}
{{ summary }}
{{ summary_end }}

## Intended use

{{ intended }}

## Data

{{ data }}

## Evaluation

Primary metric: **{{ metric }}** ({{ metric_why }}). Intervals: {{ ci_method }}.

{{ metrics }}

Verdict: {{ verdict }}.

Gate: {{ gate }}.

## Worst classes and slices

{{ worst }}

## Known limitations

{{ limitations }}

## Parity and lineage

{{ lineage }}

## Training cost

{{ cost }}
"""


def card_data(f: Facts, license: str) -> Any:
    """The YAML front matter: Hugging Face model-card metadata with a ``model-index`` of the test metrics."""
    from huggingface_hub import EvalResult, ModelCardData

    m = f.manifest
    tag = PIPELINE_TAGS.get((m["task"], m["kind"]))
    task_type = tag or {"anomaly": "anomaly-detection"}.get(m["task"], m["task"])
    source = source_name(f.split)
    values = {k: v for k, v in f.metrics.items() if isinstance(v, float) and k != "fit_seconds"
              and not k.startswith("dl_minus_")}
    results = [EvalResult(task_type=task_type, dataset_type=source, dataset_name=source, dataset_split="test",
                          dataset_revision=m.get("data_hash"), metric_type=k, metric_name=k, metric_value=v)
               for k, v in values.items()]
    ci = f.primary_ci
    return ModelCardData(
        model_name=m["model_name"], license=license, library_name="onnx", pipeline_tag=tag,
        tags=["dlops", "onnx", m["task"], m["kind"], *([task_type] if not tag else [])], metrics=list(values),
        eval_results=results,
        dlops={"version": m.get("version"), "alias": m.get("alias"), "run_id": m.get("run_id"),
               "git_sha": m.get("git_sha"), "data_hash": m.get("data_hash"), "onnx_sha256": m.get("onnx_sha256"),
               "primary_metric": f.metric, "value": f.gate["value"], "gate": f.gate["passed"],
               "ci": [round(ci["low"], 6), round(ci["high"], 6)] if ci else None})


def render(f: Facts, license: str = "unknown") -> str:
    """The card's text, checked to parse as a Hugging Face model card with its test results."""
    from huggingface_hub import ModelCard

    m, ci_rows = f.manifest, f.stats["rows"]
    method = (f"{CI_LEVEL:.0%} percentile bootstrap, {RESAMPLES} seeded resamples of the {ci_rows} test "
              f"{'samples' if 'confident_share' in f.stats['ci'] else 'rows'}" if f.stats["ci"] else "none")
    card = ModelCard.from_template(
        card_data(f, license), template_str=TEMPLATE,
        title=f"{m['model_name']} " + (f"v{m['version']}" if m.get("version") else "(unregistered)"),
        summary_start=SUMMARY_START, summary=summary(f), summary_end=SUMMARY_END,
        intended=_list(intended_use(f)), data=data_section(f), metric=f.metric,
        metric_why=f.metrics["primary_metric"]["why"], ci_method=method, metrics=metrics_table(f),
        verdict=f.metrics.get("verdict", "n/a"), gate=f"{'PASS' if f.gate['passed'] else 'FAIL'}: {f.gate['reason']}",
        worst="\n\n".join(worst_groups(f)), limitations=_list(limitations(f)), lineage=lineage_section(f),
        cost=cost_section(f))
    parsed = ModelCard(str(card))  # raises on front matter the Hub would reject (e.g. a bad model-index)
    if not parsed.data.eval_results:
        raise ValueError("model card: the front matter has no model-index results")
    return str(card)


def prepare_card() -> None:
    """Import what ``render`` needs (~0.3 s), e.g. while deploy waits for the registry."""
    import importlib

    importlib.import_module("huggingface_hub.repocard")


def write_card(split_dir: Path, train_dir: Path, evaluate_dir: Path, deploy_dir: Path, manifest: dict[str, Any],
               license: str = "unknown") -> Path:
    """Write ``deploy_dir/card.md`` for the version described by ``manifest`` (after registration, so that
    it names the version and alias); ``deploy_dir`` holds ``parity.json``. Returns the card's path."""
    facts = gather(Path(split_dir), Path(train_dir), Path(evaluate_dir), Path(deploy_dir), manifest)
    path = Path(deploy_dir) / CARD_FILE
    path.write_text(render(facts, license), encoding="utf-8")
    log.info("model card %s: test %s %.4f, CI %s, %d limitations", path, facts.metric, facts.gate["value"],
             _ci(facts.primary_ci), len(limitations(facts)))
    return path


def card_summary(text: str) -> str:
    """The summary paragraph of a card's text."""
    found = re.search(re.escape(SUMMARY_START) + r"\s*(.*?)\s*" + re.escape(SUMMARY_END), text, re.S)
    return found.group(1) if found else ""


def attach_card(client: Any, model_name: str, version: str, card_path: Path, run_id: str) -> str:
    """Log the card as an artifact of the version's run (``model_card/v<version>/card.md``), make its
    summary the version's description and name the artifact in the version's ``model_card`` tag.
    Returns the artifact's URI."""
    folder = f"model_card/v{version}"
    client.log_artifact(run_id, str(card_path), artifact_path=folder)
    uri = f"runs:/{run_id}/{folder}/{Path(card_path).name}"
    tail = f"\n\nModel card: {uri}"
    text = card_summary(Path(card_path).read_text(encoding="utf-8"))
    if len(text) + len(tail) > MAX_DESCRIPTION:
        text = text[:MAX_DESCRIPTION - len(tail) - 1] + "…"
    client.update_model_version(model_name, str(version), description=text + tail)
    client.set_model_version_tag(model_name, str(version), "model_card", uri)
    return uri
