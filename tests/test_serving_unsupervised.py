"""The service over the three autoencoder / GAN tasks, served for real: three models built in-process
through the real steps (collect -> split -> design -> configure -> train, 1-2 epochs with tiny
kwargs -> evaluate -> deploy, no bento, no registry), each served by its own ``bentoml serve``
subprocess on a free 127.0.0.1 port (``tests.helpers.serving``) and queried over HTTP:

* a tabular anomaly model (``tab_autoencoder``): ``POST /score`` with raw records;
* a digits embedding model (``autoencoder``, latent 4, 3 k-means clusters): ``POST /embed`` with raw
  8x8 images;
* a digits conditional generation model (``dcgan``): ``POST /generate`` with labels and seeds.

Answers are checked against ONNX Runtime run in-process on the same inputs (the graph inputs made by
the model's own request side for /score and /embed, and by hand from the documented noise rule
``default_rng(seed).standard_normal(noise_dim)`` for /generate). Bad requests must be 4xx with
``{"error": ...}`` naming the problem, never 5xx, and the server must keep answering.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.conftest import make_params, run_pipeline
from tests.helpers import serving

FEATURES = ["x1", "x2", "color", "size"]  # the generated table's feature columns (target: y)
NOISE_DIM = 8
LATENT = 4
CLUSTERS = 3
MAX_SAMPLES = 64


# ---------------------------------------------------------------- building the models through the real steps


def _table(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """Numeric + categorical columns with some missing values and a yes/no label that depends on both
    (``tests/test_contracts.py::_tabular_frame``'s recipe)."""
    rng = np.random.default_rng(seed)
    color = rng.choice(["red", "green", "blue"], n)
    size = rng.choice(["S", "M", "L", "XL"], n)
    x1, x2 = rng.normal(0, 1, n), rng.uniform(0, 10, n)
    signal = x1 + 0.2 * x2 + (color == "red") * 1.5 - (size == "S")
    df = pd.DataFrame({"x1": x1.round(4), "x2": x2.round(4), "color": color, "size": size})
    df.loc[rng.random(n) < 0.1, "x2"] = np.nan
    df.loc[rng.random(n) < 0.1, "color"] = None
    df["y"] = np.where(signal + rng.normal(0, 0.5, n) > np.quantile(signal, 0.8), "yes", "no")
    return df


def _deploy(work: Path, name: str, data: dict[str, Any], arch: str, kwargs: dict[str, Any], epochs: int,
            **sections: dict[str, Any]) -> Path:
    """All seven steps' ``run`` functions in-process into ``work/<step>``; returns the deploy dir."""

    params = make_params(
        data=data, model={"name": arch, "kwargs": kwargs},
        train={"epochs": epochs, "batch_size": 64, "patience": epochs},
        evaluate={"baselines": [], "min_score": -1e9},
        deploy={"build_bento": False, "register": False, "model_name": f"dlops-test-{name}",
                "parity_batch_sizes": [7]},
        **sections)
    d = {s: work / s for s in ("collect", "split", "design", "configure", "train", "evaluate", "deploy")}
    run_pipeline(params, work)
    return d["deploy"]


@pytest.fixture(scope="module")
def mlflow_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One sqlite MLflow store for the module (train logs every run there)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


@pytest.fixture(scope="module")
def anomaly_dir(tmp_path_factory: pytest.TempPathFactory, mlflow_env: str) -> Path:
    work = tmp_path_factory.mktemp("anomaly")
    _table().to_csv(work / "table.csv", index=False)
    return _deploy(work, "anomaly", {"source": f"csv:{work / 'table.csv'}", "target": "y", "task": "anomaly"},
                   "tab_autoencoder", {"latent": 2, "hidden": [8]}, epochs=2)


@pytest.fixture(scope="module")
def embedding_dir(tmp_path_factory: pytest.TempPathFactory, mlflow_env: str) -> Path:
    return _deploy(tmp_path_factory.mktemp("embedding"), "embedding",
                   {"source": "sklearn:digits", "task": "embedding"}, "autoencoder",
                   {"latent": LATENT, "hidden": [16]}, epochs=2, embedding={"clusters": CLUSTERS})


@pytest.fixture(scope="module")
def generation_dir(tmp_path_factory: pytest.TempPathFactory, mlflow_env: str) -> Path:
    return _deploy(tmp_path_factory.mktemp("generation"), "generation",
                   {"source": "sklearn:digits", "task": "generation"}, "dcgan",
                   {"noise_dim": NOISE_DIM, "width": 8}, epochs=1, optim={"optimizer": "adam"},
                   generation={"samples": 40, "judge_epochs": 1})


def _served(model_dir: Path, work: Path) -> Iterator[tuple[httpx.Client, dict[str, Any]]]:
    with serving(model_dir, work) as info, httpx.Client(base_url=info["url"], timeout=30) as client:
        yield client, info


@pytest.fixture(scope="module")
def score_server(anomaly_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    yield from _served(anomaly_dir, tmp_path_factory.mktemp("serve-score"))


@pytest.fixture(scope="module")
def embed_server(embedding_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    yield from _served(embedding_dir, tmp_path_factory.mktemp("serve-embed"))


@pytest.fixture(scope="module")
def generate_server(generation_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    yield from _served(generation_dir, tmp_path_factory.mktemp("serve-generate"))


SERVERS = {"/score": "score_server", "/embed": "embed_server", "/generate": "generate_server"}
MODEL_DIRS = {"/score": "anomaly_dir", "/embed": "embedding_dir", "/generate": "generation_dir"}
TASKS = {"/score": "anomaly", "/embed": "embedding", "/generate": "generation"}
FIELDS = {"/score": "records", "/embed": "images", "/generate": "samples"}


def client_for(request: pytest.FixtureRequest, route: str) -> httpx.Client:
    return request.getfixturevalue(SERVERS[route])[0]


def manifest_of(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "manifest.json").read_text())


# ---------------------------------------------------------------- in-process references


def in_process(model_dir: Path, items: list[Any]) -> np.ndarray:
    """The served graph's output on ``items``: the model's own request side validates the JSON items
    and makes the graph inputs; a fresh ONNX Runtime session (not the service's) runs them."""
    import onnxruntime as ort
    from pydantic import TypeAdapter

    from serving.model import load_model_from

    model = load_model_from(model_dir, "test")
    items = TypeAdapter(model.requests.items_type()).validate_python(json.loads(json.dumps(items)))
    feeds = model.requests.to_inputs(items).feeds
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run([model.manifest["output"]["name"]], feeds)[0]


def records(n: int, seed: int = 1) -> list[dict[str, Any]]:
    """Fresh raw rows as JSON records: nulls for missing values, no target."""
    df = _table(n, seed)[FEATURES]
    return [{k: None if (v is None or (isinstance(v, float) and np.isnan(v))) else v for k, v in row.items()}
            for row in df.to_dict("records")]


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().images[-20:].astype(int)  # raw 0..16 values, as a client holds them


def generated_reference(model_dir: Path, samples: list[tuple[str, int]]) -> np.ndarray:
    """The generator graph on the documented noise of each seed and the index of each label."""
    import onnxruntime as ort

    manifest = manifest_of(model_dir)
    classes = manifest["input"]["label"]["classes"]
    noise = np.stack([np.random.default_rng(seed).standard_normal(NOISE_DIM) for _, seed in samples])
    labels = np.array([classes.index(label) for label, _ in samples], np.int64)
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(["image"], {"noise": noise.astype(np.float32), "label": labels})[0]
    return np.clip(out, *manifest["input"]["image"]["value_range"])


# ---------------------------------------------------------------- 1. anomaly: POST /score


def test_score_matches_onnx_runtime_and_the_threshold_rule(score_server: tuple, anomaly_dir: Path) -> None:
    http, _ = score_server
    manifest = manifest_of(anomaly_dir)
    recs = records(30)
    recs.append({"x1": 1e4, "x2": 5.0, "color": "red", "size": "M"})  # far outside the train rows
    recs.append({"x1": None, "x2": None, "color": "purple", "size": None})  # imputed + unknown category
    resp = http.post("/score", json={"records": recs})
    assert resp.status_code == 200, resp.text
    result = resp.json()
    assert result["task"] == "anomaly" and result["target"] == "y"
    threshold = result["threshold"]
    assert isinstance(threshold, float) and threshold == pytest.approx(manifest["rule"]["value"], rel=1e-12)
    preds = result["predictions"]
    assert len(preds) == len(recs)

    errors = in_process(anomaly_dir, recs).astype(np.float64)  # [N, 4]: one reconstruction error per column
    assert errors.shape == (len(recs), len(FEATURES)) and (errors >= 0).all()
    for pred, row in zip(preds, errors):
        assert set(pred) == {"score", "anomaly", "top_columns"}, pred
        assert isinstance(pred["score"], float) and isinstance(pred["anomaly"], bool)
        assert pred["score"] == pytest.approx(row.sum(), rel=1e-6, abs=1e-9)  # the sum of the per-column errors
        assert pred["anomaly"] == (pred["score"] >= threshold)
        top = pred["top_columns"]
        assert len(top) == 3 and all(set(t) == {"column", "error"} for t in top)
        assert {t["column"] for t in top} <= set(FEATURES) and len({t["column"] for t in top}) == 3
        got = [t["error"] for t in top]
        assert got == sorted(got, reverse=True)
        for t in top:
            assert t["error"] == pytest.approx(row[FEATURES.index(t["column"])], rel=1e-6, abs=1e-9)
        np.testing.assert_allclose(got, np.sort(row)[::-1][:3], rtol=1e-6, atol=1e-9)
        # the column left out is the smallest: the score is the top three plus it
        assert pred["score"] == pytest.approx(sum(got) + row.min(), rel=1e-6, abs=1e-9)
    outlier = preds[-2]
    assert outlier["anomaly"] is True and outlier["top_columns"][0]["column"] == "x1"
    assert outlier["score"] > max(p["score"] for p in preds[:-2])
    assert result["notes"]["unknown_categories"] == {"color": 1}
    assert result["notes"]["missing_values"]["size"] == 1


def test_score_order_and_batch_independent(score_server: tuple) -> None:
    """A record scores the same alone as in a batch."""
    http, _ = score_server
    recs = records(5, seed=4)
    batch = http.post("/score", json={"records": recs}).json()["predictions"]
    alone = [http.post("/score", json={"records": [r]}).json()["predictions"][0] for r in recs]
    for a, b in zip(alone, batch):
        assert a["score"] == pytest.approx(b["score"], rel=1e-6) and a["anomaly"] == b["anomaly"]


def test_anomaly_model_has_no_predict_route(score_server: tuple) -> None:
    http, _ = score_server
    resp = http.post("/predict", json={"records": records(1)})
    assert resp.status_code in (404, 405), resp.text
    assert http.get("/score").status_code == 405  # the route takes POST only


def test_anomaly_metadata(score_server: tuple, anomaly_dir: Path) -> None:
    http, _ = score_server
    manifest = manifest_of(anomaly_dir)
    meta = http.get("/metadata").json()
    assert meta["task"] == "anomaly" and meta["kind"] == "tabular"
    assert meta["route"] == "score" and meta["rule"]["value"] == manifest["rule"]["value"]
    assert meta["output"]["parts"] == FEATURES == [c["name"] for c in meta["input"]["columns"]]
    for key in ("model_name", "metrics", "input", "output", "target", "primary_metric"):
        assert meta[key] == manifest[key], key


# ---------------------------------------------------------------- 2. embedding: POST /embed


def test_embed_matches_onnx_runtime_and_nearest_centroid(embed_server: tuple, embedding_dir: Path,
                                                         digits: np.ndarray) -> None:
    http, _ = embed_server
    manifest = manifest_of(embedding_dir)
    centroids = np.asarray(manifest["rule"]["centroids"], np.float64)
    assert centroids.shape == (CLUSTERS, LATENT)
    images = digits.tolist()  # 20 raw 8x8 images, ints 0..16 as nested lists
    resp = http.post("/embed", json={"images": images})
    assert resp.status_code == 200, resp.text
    result = resp.json()
    assert result["task"] == "embedding" and result["clusters"] == CLUSTERS
    preds = result["predictions"]
    assert len(preds) == len(images)
    z = np.array([p["embedding"] for p in preds])
    assert z.shape == (len(images), LATENT)
    np.testing.assert_allclose(z, in_process(embedding_dir, images), rtol=1e-5, atol=1e-6)
    for pred, vec in zip(preds, z):
        assert set(pred) == {"embedding", "cluster", "distance"}
        assert all(isinstance(v, float) for v in pred["embedding"])
        assert isinstance(pred["cluster"], int) and 0 <= pred["cluster"] < CLUSTERS
        dist = np.sqrt(((centroids - vec) ** 2).sum(1))
        assert pred["cluster"] == int(dist.argmin())
        assert pred["distance"] >= 0 and pred["distance"] == pytest.approx(dist.min(), rel=1e-6, abs=1e-9)
    # floats in range are taken as they are
    again = http.post("/embed", json={"images": (digits[:2] / 1.0).tolist()})
    assert again.status_code == 200
    assert [p["embedding"] for p in again.json()["predictions"]] == [p["embedding"] for p in preds[:2]]


def test_embedding_metadata(embed_server: tuple) -> None:
    http, _ = embed_server
    meta = http.get("/metadata").json()
    assert meta["task"] == "embedding" and meta["output"]["clusters"] == CLUSTERS
    assert meta["route"] == "embed" and len(meta["rule"]["centroids"]) == CLUSTERS
    assert http.post("/predict", json={"images": [[[0] * 8] * 8]}).status_code in (404, 405)


# ---------------------------------------------------------------- 3. generation: POST /generate


def _decode_png(text: str) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(text, validate=True))) as img:
        assert img.format == "PNG" and img.size == (8, 8) and img.mode == "L"
        return np.asarray(img)


def test_generate_labels_and_seeds(generate_server: tuple, generation_dir: Path) -> None:
    http, _ = generate_server
    resp = http.post("/generate", json={"samples": [{"label": "3", "seed": 7}, {"label": "5"}]})
    assert resp.status_code == 200, resp.text
    result = resp.json()
    assert result["task"] == "generation" and result["value_range"] == [0.0, 16.0]
    lo, hi = result["value_range"]
    preds = result["predictions"]
    assert len(preds) == 2
    for pred in preds:
        assert set(pred) == {"png", "shape", "pixels", "label", "seed"}, set(pred)
        assert pred["shape"] == [1, 8, 8]
        pixels = np.asarray(pred["pixels"], np.float64)
        assert pixels.shape == (1, 8, 8) and lo <= pixels.min() and pixels.max() <= hi
        png = _decode_png(pred["png"])  # the same image, scaled to 0..255
        np.testing.assert_allclose(png, np.round((pixels[0] - lo) / (hi - lo) * 255), atol=1)
    assert [p["label"] for p in preds] == ["3", "5"]
    assert preds[0]["seed"] == 7
    random_seed = preds[1]["seed"]
    assert isinstance(random_seed, int) and 0 <= random_seed < 2**63
    expected = generated_reference(generation_dir, [("3", 7), ("5", random_seed)])
    np.testing.assert_allclose(np.asarray([p["pixels"] for p in preds]), expected, atol=2e-4)
    # the returned random seed gives the same image back
    back = http.post("/generate", json={"samples": [{"label": "5", "seed": random_seed}]}).json()["predictions"][0]
    assert back["pixels"] == preds[1]["pixels"] and back["png"] == preds[1]["png"]


def test_generate_is_deterministic_per_seed(generate_server: tuple) -> None:
    http, _ = generate_server
    body = {"samples": [{"label": "3", "seed": 7}, {"label": "3", "seed": 7}, {"label": "3", "seed": 8},
                        {"label": "4", "seed": 7}]}
    first = http.post("/generate", json=body).json()["predictions"]
    second = http.post("/generate", json=body).json()["predictions"]
    assert first[0]["pixels"] == first[1]["pixels"] == second[0]["pixels"]  # same seed + label: same image
    assert first == second
    assert first[2]["pixels"] != first[0]["pixels"]  # another seed: another image
    assert first[3]["pixels"] != first[0]["pixels"]  # another label: another image


def test_generate_without_seed_or_label(generate_server: tuple, generation_dir: Path) -> None:
    """An omitted seed is a fresh random one (returned); omitted labels take the classes in turn."""
    http, _ = generate_server
    preds = http.post("/generate", json={"samples": [{}, {}, {}, {"label": None}]}).json()["predictions"]
    classes = manifest_of(generation_dir)["input"]["label"]["classes"]
    assert [p["label"] for p in preds] == classes[:4]
    seeds = [p["seed"] for p in preds]
    assert len(set(seeds)) == 4 and all(isinstance(s, int) and s >= 0 for s in seeds)
    again = http.post("/generate", json={"samples": [{}]}).json()["predictions"][0]
    assert again["seed"] not in seeds and again["pixels"] != preds[0]["pixels"]
    full = http.post("/generate", json={"samples": [{"seed": i} for i in range(MAX_SAMPLES)]})
    assert full.status_code == 200 and len(full.json()["predictions"]) == MAX_SAMPLES


def test_generation_metadata(generate_server: tuple) -> None:
    http, _ = generate_server
    meta = http.get("/metadata").json()
    assert meta["task"] == "generation" and meta["input"]["kind"] == "noise"
    assert meta["limits"]["max_samples"] == MAX_SAMPLES
    assert http.post("/predict", json={"samples": [{}]}).status_code in (404, 405)


# ---------------------------------------------------------------- 4. bad requests: 4xx naming the problem

DIGIT = [[0] * 8 for _ in range(8)]
GOOD_RECORD = {"x1": 0.5, "x2": 3.0, "color": "red", "size": "M"}

BAD = [
    # route, body (JSON-able, or bytes), content type, status, words in the error
    ("/generate", {"samples": [{"label": "42"}]}, None, 400, "samples[0].label: '42' is not one of"),
    ("/generate", {"samples": [{"label": "3"}, {"label": "x", "seed": 1}]}, None, 400, "samples[1].label"),
    ("/generate", {"samples": [{"label": "3", "seed": -1}]}, None, 400, "samples[0].seed"),
    ("/generate", {"samples": [{"seed": 2**63}]}, None, 400, "samples[0].seed"),
    ("/generate", {"samples": [{"seed": 1.5}]}, None, 400, "samples[0].seed"),
    ("/generate", {"samples": [{"label": 3}]}, None, 400, "samples[0].label"),
    ("/generate", {"samples": [{}] * (MAX_SAMPLES + 1)}, None, 400, "at most 64"),
    ("/generate", {"samples": []}, None, 400, "at least 1"),
    ("/generate", {"samples": [{"label": "3", "colour": "red"}]}, None, 400, "samples[0].colour"),
    ("/generate", {"samples": {"label": "3"}}, None, 400, "samples"),
    ("/generate", {"samples": ["3"]}, None, 400, "samples[0]"),
    ("/generate", {}, None, 400, "samples: Field required"),
    ("/generate", {"images": [DIGIT]}, None, 400, "samples: Field required"),
    ("/generate", {"samples": [{}], "n": 2}, None, 400, "n: unknown field"),
    ("/generate", b'{"samples": [{"seed": 1}]}', "text/plain", 415, "application/json"),
    ("/generate", b"samples=1", "application/x-www-form-urlencoded", 415, "application/json"),
    ("/generate", b'{"samples": [{"seed": 1}', "application/json", 400, "Invalid JSON"),
    ("/score", {"records": [GOOD_RECORD, {k: v for k, v in GOOD_RECORD.items() if k != "size"}]}, None, 400,
     "records[1].size: field required"),
    ("/score", {"records": [{**GOOD_RECORD, "x1": "abc"}]}, None, 400,
     "records[0].x1: expected a number, a numeric string or null"),
    ("/score", {"records": [{**GOOD_RECORD, "y": "yes"}]}, None, 400, "records[0].y: unknown field"),
    ("/score", {"records": []}, None, 400, "got 0"),
    ("/score", {}, None, 400, "records: Field required"),
    ("/score", b'{"records": []}', "text/csv", 415, "application/json"),
    ("/embed", {"images": [DIGIT[:7]]}, None, 400, "images[0]: expected 8 rows"),
    ("/embed", {"images": [[row[:7] for row in DIGIT]]}, None, 400, "images[0] row 0: expected a list of 8"),
    ("/embed", {"images": [[[17] * 8] * 8]}, None, 400, "value out of range"),
    ("/embed", {}, None, 400, "images: Field required"),
    ("/embed", b'{"images": []}', "text/plain", 415, "application/json"),
]


@pytest.mark.parametrize("route,body,content_type,status,words", BAD,
                         ids=[f"{r}-{i}" for i, (r, *_) in enumerate(BAD)])
def test_bad_request_is_4xx_naming_the_problem(request: pytest.FixtureRequest, route: str, body: Any,
                                               content_type: str | None, status: int, words: str) -> None:
    http = client_for(request, route)
    if isinstance(body, bytes):
        resp = http.post(route, content=body, headers={"content-type": content_type})
    else:
        resp = http.post(route, json=body)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    payload = resp.json()
    assert list(payload) == ["error"] and isinstance(payload["error"], str), payload
    assert words in payload["error"], payload["error"]


GOOD = {"/score": {"records": [GOOD_RECORD]}, "/embed": {"images": [DIGIT]},
        "/generate": {"samples": [{"label": "3", "seed": 7}]}}


@pytest.mark.parametrize("route", list(SERVERS))
def test_server_keeps_answering_after_bad_requests(request: pytest.FixtureRequest, route: str) -> None:
    http, info = request.getfixturevalue(SERVERS[route])
    for body in (b"", b"null", b"[]", b'{"' + FIELDS[route].encode() + b'": null}', b"\xff\xfe"):
        resp = http.post(route, content=body, headers={"content-type": "application/json"})
        assert 400 <= resp.status_code < 500, (body, resp.status_code, resp.text)
    resp = http.post(route, json=GOOD[route])
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["predictions"]) == 1
    assert info["proc"].poll() is None
    log = info["log"].read_text()
    assert "Traceback" not in log, log[-3000:]
    assert f"POST {route} rejected (400): " in log


# ---------------------------------------------------------------- 5. OpenAPI


@pytest.mark.parametrize("route", list(SERVERS))
def test_openapi_lists_the_task_route(request: pytest.FixtureRequest, route: str) -> None:
    http = client_for(request, route)
    spec = http.get("/docs.json").json()
    assert route in spec["paths"] and "/metadata" in spec["paths"]
    assert "/predict" not in spec["paths"]
    post = spec["paths"][route]["post"]
    schema = post["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == [FIELDS[route]] and FIELDS[route] in schema["properties"]
    assert "400" in post["responses"] and "415" in post["responses"]
    meta = http.get("/metadata").json()
    assert meta["task"] == TASKS[route]
    if route == "/generate":
        item = schema["properties"]["samples"]["items"]
        assert set(item["properties"]) == {"label", "seed"} and item["additionalProperties"] is False
        assert schema["properties"]["samples"]["maxItems"] == MAX_SAMPLES
