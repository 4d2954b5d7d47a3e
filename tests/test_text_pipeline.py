"""Text classification through all seven steps: generated English and Chinese review corpora,
LSTM and Transformer, a real sqlite MLflow registry, and the served model over HTTP."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.data import load_split
from pipelines.plugins import predict_outputs
from pipelines.evaluate import load_network
from serving.runtime import make_session, softmax
from tests.conftest import make_params, run_pipeline


EN_POS = ["great", "wonderful", "loved", "excellent", "fantastic", "enjoyable", "brilliant", "superb"]
EN_NEG = ["terrible", "awful", "hated", "boring", "dreadful", "horrible", "waste", "disappointing"]
EN_FILL = ["the", "movie", "film", "plot", "actors", "story", "was", "really", "quite", "and", "a", "very",
           "ending", "music", "scenes", "this", "i", "it", "watched", "yesterday", "with", "friends"]
ZH_POS = ["太好看了", "非常精彩", "很喜欢", "推荐", "感人"]
ZH_NEG = ["太难看了", "很无聊", "浪费时间", "失望", "糟糕"]
ZH_FILL = ["这部电影", "剧情", "演员", "音乐", "结局", "我们", "昨天", "看了", "真的", "有点"]


def review_corpus(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """English and Chinese reviews; the sentiment words carry the signal, lengths vary 4..40 tokens."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        positive = bool(rng.random() < 0.5)
        if i % 3 == 2:  # a third Chinese
            words = list(rng.choice(ZH_FILL, rng.integers(2, 8)))
            words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(ZH_POS if positive else ZH_NEG)))
            text = "".join(words)
        else:
            words = list(rng.choice(EN_FILL, rng.integers(3, 40)))
            for _ in range(int(rng.integers(1, 3))):
                words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(EN_POS if positive else EN_NEG)))
            text = " ".join(words).capitalize() + "."
        rows.append({"review": text, "sentiment": "positive" if positive else "negative"})
    return pd.DataFrame(rows)


def text_params(arch: str, kwargs: dict, epochs: int):
    return make_params(
        data={"source": "csv:data/raw/reviews.csv", "text": "review", "target": "sentiment", "task": "auto"},
        model={"name": arch, "kwargs": kwargs},
        optim={"label_smoothing": 0.0, "lr": 0.003, "scheduler": "none"},
        train={"epochs": epochs, "batch_size": 32, "patience": epochs},
        evaluate={"min_score": 0.9, "baselines": ["tfidf_logreg"], "threshold_objective": "none"},
        deploy={"model_name": f"reviews-{arch}", "build_bento": False},
    )


@pytest.fixture(scope="module", params=[("lstm", {}, 8), ("transformer", {}, 8)], ids=["lstm", "transformer"])
def text_run(request, tmp_path_factory):
    arch, kwargs, epochs = request.param
    work = tmp_path_factory.mktemp(f"text-{arch}")
    (work / "data" / "raw").mkdir(parents=True)
    review_corpus().to_csv(work / "data" / "raw" / "reviews.csv", index=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
        yield arch, work, run_pipeline(text_params(arch, kwargs, epochs), work)


def test_learns_the_fixture_corpus(text_run):
    arch, work, result = text_run
    metrics = json.loads((work / "evaluate" / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.9, (arch, metrics)
    assert "tfidf_logreg" in metrics["baselines"] and "macro_f1" in metrics
    wrong = (work / "evaluate" / "plots" / "confidently_wrong.csv").read_text().splitlines()
    assert wrong[0] == "text,label,predicted,confidence"
    assert result["deploy"]["alias"] == "champion"


def test_deployed_graph_has_dynamic_batch_and_sequence(text_run):
    import onnx

    _, work, _ = text_run
    model = onnx.load(str(work / "deploy" / "model.onnx"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_param
    parity = json.loads((work / "deploy" / "parity.json").read_text())
    assert parity["passed"] and len({c["seq_len"] for c in parity["cases"]}) == 2  # two widths
    manifest = json.loads((work / "deploy" / "manifest.json").read_text())
    assert manifest["kind"] == "text" and manifest["input"]["tokenizer"] == "tokenizer.json"
    assert manifest["input"]["column"] == "review"  # the corpus column it learned from
    assert (work / "deploy" / "tokenizer.json").exists()


def test_batch_prediction_reads_the_trained_text_column_unasked(text_run, tmp_path):
    """The user's raw corpus file, as collect read it: `review` is found without --column because the
    manifest names it (the file has two other columns, so no other rule could pick it)."""
    from pipelines import predict
    from serving.model import load_model_from

    _, work, _ = text_run
    raw = pd.read_csv(work / "data" / "raw" / "reviews.csv").head(50).assign(id=range(50))
    raw.to_csv(tmp_path / "new.csv", index=False)
    model = load_model_from(work / "deploy", str(work / "deploy"))
    predict.run(model, tmp_path / "new.csv", tmp_path / "p.csv", progress=False)
    got = pd.read_csv(tmp_path / "p.csv")
    assert len(got) == 50 and set(got["label"]) <= {"positive", "negative"}


@pytest.mark.slow
def test_service_over_http_equals_pipeline_predictions(text_run, tmp_path):
    """Raw test texts -> `bentoml serve` (tokenizer inside the service) -> the pipeline's answers."""
    import httpx

    from tests.helpers import serving

    _, work, _ = text_run
    texts = pd.read_parquet(work / "split" / "test.parquet")["text"].tolist()[:64]
    X_test, _ = load_split(work / "split", "test")
    expected = softmax(predict_outputs(load_network(work / "train" / "model.pt"), X_test[:64]))
    with serving(work / "deploy", tmp_path, timeout=120) as server:
        resp = httpx.post(f"{server['url']}/predict", json={"texts": texts}, timeout=60)
    assert resp.status_code == 200, resp.text
    served = np.array([p["probabilities"] for p in resp.json()["predictions"]])
    np.testing.assert_allclose(served, expected, atol=1e-5)
    in_process = softmax(make_session(work / "deploy" / "model.onnx").run(None, {"input": X_test[:64]})[0])
    np.testing.assert_allclose(in_process, expected, atol=1e-5)
