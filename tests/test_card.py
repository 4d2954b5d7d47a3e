"""Model cards (pipelines/card.py): rendered for real models and attached to a real registry version.

Three tiny models go through the seven steps in-process (digits classification, sklearn:diabetes
regression, a tabular anomaly model), each registered in the module's own sqlite MLflow store; the card
is written from their outputs and attached to the version. Checked: the front matter parses as a
Hugging Face model card with a ``model-index``, every section is there, each bootstrap interval holds
its point estimate (and the recomputed test outputs give evaluate's numbers), the version's description
and ``model_card`` tag are set and the artifact downloads to the same text. The metric kernels are
checked against scikit-learn, and the limitations against hand-made facts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines import card
from tests.conftest import make_params, run_pipeline

SECTIONS = ("## Intended use", "## Data", "## Evaluation", "## Worst classes and slices", "## Known limitations",
            "## Parity and lineage", "## Training cost")

MODELS: dict[str, dict[str, Any]] = {
    "classification": dict(model={"name": "cnn", "kwargs": {"channels": [4, 8], "hidden": 16, "dropout": 0.0}},
                           train={"epochs": 2}, evaluate={"baselines": ["knn"], "min_score": 0.0}),
    "regression": dict(data={"source": "sklearn:diabetes"}, model={"name": "mlp", "kwargs": {"hidden": [16]}},
                       train={"epochs": 2}, evaluate={"baselines": ["linear"], "min_score": -1e9}),
    "anomaly": dict(model={"name": "tab_autoencoder", "kwargs": {"latent": 2, "hidden": [8]}},
                    train={"epochs": 2, "batch_size": 64},
                    evaluate={"baselines": ["isolation_forest"], "min_score": -1e9}),
}
PIPELINE_TAG = {"classification": "image-classification", "regression": "tabular-regression", "anomaly": None}


def _table(n: int = 240, seed: int = 0) -> Any:
    """Numbers and categories (with missing values) and a yes/no label that depends on both."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    color, size = rng.choice(["red", "green", "blue"], n), rng.choice(["S", "M", "L", "XL"], n)
    x1, x2 = rng.normal(0, 1, n), rng.uniform(0, 10, n)
    signal = x1 + 0.2 * x2 + (color == "red") * 1.5 - (size == "S")
    df = pd.DataFrame({"x1": x1.round(4), "x2": x2.round(4), "color": color, "size": size})
    df.loc[rng.random(n) < 0.1, "color"] = None
    df["y"] = np.where(signal + rng.normal(0, 0.5, n) > np.quantile(signal, 0.8), "yes", "no")
    return df


def _build(work: Path, task: str) -> dict[str, Path]:
    """All seven steps in-process into ``work/<step>``, registering the version (no Bento)."""
    sections = dict(MODELS[task])
    if task == "anomaly":
        _table().to_csv(work / "table.csv", index=False)
        sections["data"] = {"source": f"csv:{work / 'table.csv'}", "target": "y", "task": "anomaly"}
    params = make_params(deploy={"build_bento": False, "register": True, "model_name": f"dlops-card-{task}",
                                 "parity_batch_sizes": [64]}, **sections)
    d = {s: work / s for s in ("collect", "split", "design", "configure", "train", "evaluate", "deploy")}
    run_pipeline(params, work)
    return d


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


@pytest.fixture(scope="module", params=list(MODELS))
def carded(request: pytest.FixtureRequest, registry: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A deployed, registered model of one task with its card written and attached."""
    from mlflow.tracking import MlflowClient

    task = request.param
    d = _build(tmp_path_factory.mktemp(task), task)
    manifest = json.loads((d["deploy"] / "manifest.json").read_text())
    started = time.perf_counter()
    path = card.write_card(d["split"], d["train"], d["evaluate"], d["deploy"], manifest)
    seconds = time.perf_counter() - started
    client = MlflowClient(registry)
    uri = card.attach_card(client, manifest["model_name"], manifest["version"], path, manifest["run_id"])
    return {"task": task, "dirs": d, "manifest": manifest, "path": path, "text": path.read_text(), "uri": uri,
            "client": client, "seconds": seconds,
            "metrics": json.loads((d["evaluate"] / "metrics.json").read_text())}


def test_card_parses_as_a_hugging_face_model_card(carded: dict[str, Any]) -> None:
    from huggingface_hub import ModelCard

    parsed = ModelCard(carded["text"])
    data, metrics, manifest = parsed.data, carded["metrics"], carded["manifest"]
    assert data.library_name == "onnx" and data.license and "dlops" in data.tags
    assert data.pipeline_tag == PIPELINE_TAG[carded["task"]]
    primary = metrics["primary_metric"]["name"]
    results = {r.metric_type: r for r in data.eval_results}
    assert results[primary].metric_value == metrics[primary] and results[primary].dataset_split == "test"
    assert data.to_dict()["dlops"]["run_id"] == manifest["run_id"]
    assert carded["seconds"] < 20, f"writing the card took {carded['seconds']:.1f} s"


def test_card_has_every_section_and_the_facts(carded: dict[str, Any]) -> None:
    text, manifest, metrics = carded["text"], carded["manifest"], carded["metrics"]
    positions = [text.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    for fact in (manifest["run_id"], manifest["data_hash"], manifest["git_sha"], manifest["onnx_sha256"],
                 metrics["verdict"], "max |diff|", "Network fit:"):
        assert fact in text
    header = next(line for line in text.splitlines() if line.startswith("| test metric"))
    assert all(b in header for b in metrics["baselines"])  # the baselines side by side
    worst = text.split("## Worst classes and slices")[1].split("## Known limitations")[0]
    expected = {"classification": "Worst classes by test F1", "regression": "| sex |",
                "anomaly": "Worst slices of the test table by roc_auc"}[carded["task"]]
    assert expected in worst
    limitations = text.split("## Known limitations")[1].split("## Parity")[0]
    assert "small test split" in limitations and "ONNX Runtime differs from PyTorch" in limitations
    if carded["task"] == "anomaly":
        assert "| color |" in worst and "class imbalance" in limitations


def test_intervals_hold_the_point_estimates(carded: dict[str, Any]) -> None:
    d, metrics = carded["dirs"], carded["metrics"]
    split = json.loads((d["split"] / "split.json").read_text())
    gate = json.loads((d["evaluate"] / "gate.json").read_text())
    report = json.loads((d["evaluate"] / "report.json").read_text())
    stats = card.intervals(d["split"], d["train"], split, metrics, report, gate["rule"])
    primary = metrics["primary_metric"]["name"]
    assert primary in stats["ci"] and stats["rows"] == metrics["test_rows"]
    for name, ci in stats["ci"].items():
        assert ci["low"] - 1e-6 <= metrics[name] <= ci["high"] + 1e-6, (name, ci, metrics[name])
        assert ci["resamples"] > 900 and abs(stats["recomputed"][name] - metrics[name]) < 1e-5
    ci = stats["ci"][primary]
    assert f"[{ci['low']:.4f}, {ci['high']:.4f}]" in carded["text"]


def test_card_is_attached_to_the_registry_version(carded: dict[str, Any], tmp_path: Path) -> None:
    import mlflow

    client, manifest = carded["client"], carded["manifest"]
    mv = client.get_model_version(manifest["model_name"], manifest["version"])
    assert mv.description.startswith(card.card_summary(carded["text"]))
    assert mv.description.endswith(f"Model card: {carded['uri']}") and len(mv.description) <= card.MAX_DESCRIPTION
    assert mv.tags["model_card"] == carded["uri"]
    assert carded["uri"] == f"runs:/{manifest['run_id']}/model_card/v{manifest['version']}/card.md"
    local = mlflow.artifacts.download_artifacts(artifact_uri=carded["uri"], dst_path=str(tmp_path),
                                                tracking_uri=mlflow.get_tracking_uri())
    assert Path(local).read_text() == carded["text"]


# ---------------------------------------------------------------- kernels, limitations, description


def _resample(n: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rows = np.random.default_rng(seed).integers(0, n, n)
    return rows, np.bincount(rows, minlength=n)[None].astype(np.float64)


def test_kernels_match_scikit_learn_on_the_data_and_a_resample() -> None:
    from sklearn import metrics as M

    rng = np.random.default_rng(0)
    n = 600
    y = rng.integers(0, 2, n)
    s = np.round(rng.random(n) + 0.3 * y, 2)  # ties: shared thresholds
    proba = np.c_[1 - s, s]
    rows = card.rows_from_outputs(y, {"proba": proba, "pred": proba.argmax(1)}, {"value": 0.6})
    pred = (s >= 0.6).astype(int)
    refs = {"accuracy": M.accuracy_score, "balanced_accuracy": M.balanced_accuracy_score,
            "f1": M.f1_score, "macro_f1": lambda a, b: M.f1_score(a, b, average="macro"),
            "precision": M.precision_score, "recall": M.recall_score}
    scores = {"roc_auc": M.roc_auc_score, "pr_auc": M.average_precision_score}
    kernels = card.kernels(rows, {k: 0.5 for k in [*refs, *scores]})
    r, W = _resample(n)
    for idx, weights in ((np.arange(n), np.ones((1, n))), (r, W)):
        for name, ref in refs.items():
            assert kernels[name](weights)[0] == pytest.approx(ref(y[idx], pred[idx]), abs=1e-12), name
        for name, ref in scores.items():
            assert kernels[name](weights)[0] == pytest.approx(ref(y[idx], s[idx]), abs=1e-12), name
    yr = rng.normal(size=n).astype(np.float32)
    pr = yr + rng.normal(scale=0.5, size=n)
    k = card.kernels(card.rows_from_outputs(yr, {"pred": pr}, {}), {"r2": 0.5, "mae": 0.5})
    assert k["r2"](W)[0] == pytest.approx(M.r2_score(yr[r], pr[r]), abs=1e-9)
    assert k["mae"](W)[0] == pytest.approx(M.mean_absolute_error(yr[r], pr[r]), abs=1e-9)
    z, labels = rng.normal(size=(n, 3)), rng.integers(0, 4, n)
    rows = card.rows_from_outputs(labels, {"z": z}, {"centroids": rng.normal(size=(3, 3)).tolist()})
    k = card.kernels(rows, {"ari": 0.5, "nmi": 0.5, "silhouette": 0.5})
    assert k["ari"](W)[0] == pytest.approx(M.adjusted_rand_score(labels[r], rows.label[r]), abs=1e-12)
    assert k["nmi"](W)[0] == pytest.approx(M.normalized_mutual_info_score(labels[r], rows.label[r]), abs=1e-12)
    assert k["silhouette"](np.ones((1, n)))[0] == pytest.approx(M.silhouette_score(z, rows.label), abs=1e-12)


def test_bootstrap_is_seeded_and_fast() -> None:
    rng = np.random.default_rng(1)
    n = 10_000
    y = rng.integers(0, 2, n)
    s = rng.random(n) + 0.5 * y
    rows = card.rows_from_outputs(y, {"score": s}, {"value": 0.8})
    kernels = card.kernels(rows, {"roc_auc": 0.5, "f1": 0.5})
    started = time.perf_counter()
    first = card.bootstrap({"roc_auc": kernels["roc_auc"]}, n)
    seconds = time.perf_counter() - started
    assert first == card.bootstrap({"roc_auc": kernels["roc_auc"]}, n)  # seeded
    assert first["roc_auc"]["resamples"] == card.RESAMPLES
    assert seconds < 3, f"1,000 resamples of 10k rows took {seconds:.2f} s"  # ~0.3 s; slack for a shared box
    report = {"per_class": {"0": {"samples": 30}, "1": {"samples": 10}}}  # a generation task's
    shares = card._share_intervals({"confident_share": 0.75}, report)
    assert shares["_rows"] == 40 and shares["confident_share"]["low"] < 0.75 < shares["confident_share"]["high"]


def _facts(**changes: Any) -> card.Facts:
    ci = {"low": 0.90, "high": 0.96, "resamples": 1000, "level": 0.95}
    facts = card.Facts(
        split={"data_params": {"source": "csv:/home/me/data/churn.csv"}, "sizes": {"train": 800, "test": 120},
               "classes": ["no", "yes"], "class_counts": {"train": [600, 200]}, "leakage": {}},
        run={}, report={}, slices=[], parity={"max_abs_diff": 3e-7, "rows": 120, "atol": 1e-4, "scale": 1.0},
        metrics={"roc_auc": 0.93, "test_rows": 120, "primary_metric": {"name": "roc_auc", "why": "auto"},
                 "baselines": {"logreg": {"roc_auc": 0.92, "fit_seconds": 0.1}, "knn": {"roc_auc": 0.7}}},
        gate={"metric": "roc_auc", "value": 0.93, "passed": False, "reason": "test roc_auc 0.9300 < 0.95"},
        manifest={"alias": "challenger"},
        stats={"ci": {"roc_auc": ci}, "recomputed": {"roc_auc": 0.93}, "rows": 120, "note": None, "kernels": {}})
    for key, value in changes.items():
        setattr(facts, key, value)
    return facts


def test_limitations_come_from_the_facts() -> None:
    text = "\n".join(card.limitations(_facts()))
    assert "the logreg baseline is as good here" in text and "knn" not in text
    assert "small test split: 120 rows, so the 95% CI of roc_auc is 0.060 wide" in text
    assert "class imbalance: the largest class has 3.0x the rows of the smallest ('yes', 200 train rows)" in text
    assert "ONNX Runtime differs from PyTorch by up to 3.00e-07" in text
    assert "the evaluate gate failed (test roc_auc 0.9300 < 0.95)" in text
    assert "csv:churn.csv" in text and "/home/me" not in text
    better = _facts(metrics={**_facts().metrics, "baselines": {"gboost": {"roc_auc": 0.97}}})
    assert "the gboost baseline is better here" in "\n".join(card.limitations(better))
    assert "differs from evaluate's" in "\n".join(card.limitations(_facts(stats={**_facts().stats,
                                                                                "recomputed": {"roc_auc": 0.5}})))


class _Client:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def log_artifact(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("log_artifact", args, kwargs))

    def update_model_version(self, name: str, version: str, description: str) -> None:
        self.calls.append(("description", name, version, description))

    def set_model_version_tag(self, *args: Any) -> None:
        self.calls.append(("tag", *args))


def test_description_is_the_summary_within_mlflows_limit(tmp_path: Path) -> None:
    path = tmp_path / "card.md"
    path.write_text(f"---\nlicense: unknown\n---\n# m\n\n{card.SUMMARY_START}\n{'x' * 9000}\n{card.SUMMARY_END}\n")
    client = _Client()
    uri = card.attach_card(client, "m", "7", path, "abc")
    assert uri == "runs:/abc/model_card/v7/card.md"
    assert client.calls[0] == ("log_artifact", ("abc", str(path)), {"artifact_path": "model_card/v7"})
    description = client.calls[1][3]
    assert len(description) == card.MAX_DESCRIPTION and description.endswith(f"Model card: {uri}")
    assert client.calls[2] == ("tag", "m", "7", "model_card", uri)
