"""The BentoML service, served for real: `bentoml serve` in a subprocess on a free 127.0.0.1 port,
over a small exported ONNX model, queried with bentoml.SyncHTTPClient and raw HTTP; predictions are
checked against ONNX Runtime run in-process on the same inputs."""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pytest

from tests.helpers import build_demo_model
from serving.model import ModelLoadError, load_model, resolve_model_dir
from pipelines.modalities.image.serve import MAX_BODY_BYTES, MAX_IMAGES

ZERO_ROW = [0] * 8


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_model(tmp_path_factory.mktemp("deploy"))


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().images[:40]  # float64 [40, 8, 8], raw values 0..16


def onnx_reference(model_dir: Path, images: np.ndarray) -> np.ndarray:
    """Probabilities straight from an ONNX Runtime session, independent of the serving code."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": images.reshape(-1, 1, 8, 8).astype(np.float32)})
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def check_predictions(result: dict[str, Any], expected: np.ndarray) -> None:
    probs = np.array([p["probabilities"] for p in result["predictions"]])
    assert probs.shape == expected.shape
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    assert [p["class_index"] for p in result["predictions"]] == expected.argmax(axis=1).tolist()
    assert [p["label"] for p in result["predictions"]] == [str(k) for k in expected.argmax(axis=1)]
    assert result["classes"] == [str(i) for i in range(10)]


def test_predict_one_image_with_bentoml_client(server: dict[str, Any], model_dir: Path, digits: np.ndarray) -> None:
    import bentoml

    with bentoml.SyncHTTPClient(server["url"]) as client:
        assert client.is_ready()
        result = client.predict(images=digits[:1].tolist())
    check_predictions(result, onnx_reference(model_dir, digits[:1]))
    identity = (result["model_name"], result["model_version"], result["model_alias"])
    assert identity == ("dlops-digits-demo", "7", "champion")


def test_predict_many_images_raw_http(http: httpx.Client, model_dir: Path, digits: np.ndarray) -> None:
    resp = http.post("/predict", json={"images": digits.astype(int).tolist()})  # ints, as the data is
    assert resp.status_code == 200, resp.text
    check_predictions(resp.json(), onnx_reference(model_dir, digits))


def test_metadata_returns_the_manifest(http: httpx.Client, model_dir: Path) -> None:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    resp = http.get("/metadata")
    assert resp.status_code == 200, resp.text
    meta = resp.json()
    for key in ("model_name", "version", "alias", "alias_reason", "metrics", "classes", "input", "output",
                "task", "created_at"):
        assert meta[key] == manifest[key], key
    assert meta["lineage"] == {k: manifest[k] for k in ("run_id", "data_hash", "git_sha", "onnx_sha256")}
    assert meta["limits"] == {"max_images": MAX_IMAGES, "max_body_bytes": MAX_BODY_BYTES}


def test_docs_and_health(http: httpx.Client) -> None:
    assert http.get("/healthz").status_code == 200 and http.get("/readyz").status_code == 200
    spec = http.get("/docs.json").json()
    assert "/metadata" in spec["paths"] and "/predict" in spec["paths"]
    body = json.dumps(spec["paths"]["/predict"]["post"]["requestBody"])
    assert "images" in body and "maxItems" in body
    assert http.get("/docs", follow_redirects=True).text.lower().count("swagger") > 0


def image(**pixel: Any) -> list[list[Any]]:
    """An all-zero 8x8 image with one pixel set: image(at=(row, col), value=...)."""
    rows = [list(ZERO_ROW) for _ in range(8)]
    if pixel:
        r, c = pixel["at"]
        rows[r][c] = pixel["value"]
    return rows


def raw(text: str) -> bytes:
    return text.encode()


ONE_IMAGE_NAN = json.dumps({"images": [image()]}).replace("0]", "NaN]", 1)

BAD_INPUTS = {
    # name: (body: JSON-able or raw bytes, expected status, expected words in the message)
    "4-d image 1x2x8x8": ({"images": [[image(), image()]]}, 400, "images[0]: expected 8 rows"),
    "bare 8x8 image": ({"images": image()}, 400, "bare 8x8"),
    "7 rows": ({"images": [image()[:7]]}, 400, "got list of length 7"),
    "7 columns": ({"images": [image()[:3] + [ZERO_ROW[:7]] + image()[4:]]}, 400,
                  "images[0] row 3: expected a list of 8"),
    "string pixel": ({"images": [image(at=(1, 2), value="0.5")]}, 400,
                     "images[0] row 1 column 2: expected a number, got str"),
    "null pixel": ({"images": [image(at=(0, 0), value=None)]}, 400, "column 0: expected a number, got null"),
    "boolean pixel": ({"images": [image(at=(7, 7), value=True)]}, 400, "column 7: expected a number, got bool"),
    "NaN literal": (raw(ONE_IMAGE_NAN), 400, "expected a finite number"),
    "Infinity literal": (raw(json.dumps({"images": [image(at=(2, 2), value=0.25)]}).replace("0.25", "Infinity")),
                         400, "row 2 column 2: expected a finite number"),
    "-Infinity literal": (raw(json.dumps({"images": [image(at=(2, 2), value=0.25)]}).replace("0.25", "-Infinity")),
                          400, "expected a finite number"),
    "overflowing number": (raw(json.dumps({"images": [image(at=(2, 2), value=0.25)]}).replace("0.25", "1e999")),
                           400, "finite"),
    "negative value": ({"images": [image(at=(4, 5), value=-1)]}, 400, "row 4 column 5: value out of range [0, 16]"),
    "value above 16": ({"images": [image(at=(4, 5), value=16.5)]}, 400, "value out of range"),
    "second image bad": ({"images": [image(), image(at=(0, 1), value="x")]}, 400, "images[1] row 0 column 1"),
    "empty list": ({"images": []}, 400, "expected 1 to 256 images per request, got 0"),
    "oversized batch": ({"images": [image()] * (MAX_IMAGES + 1)}, 400, f"got {MAX_IMAGES + 1}"),
    "images null": ({"images": None}, 400, "expected a list"),
    "missing field": ({}, 400, "Field required"),
    "invalid JSON": (raw('{"images": [[[0, 0'), 400, "Invalid JSON"),
    "not an object": ([1, 2, 3], 400, "Input should be an object"),
}


def message(resp: httpx.Response) -> str:
    return json.dumps(resp.json())


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_gets_4xx_naming_the_problem(http: httpx.Client, name: str) -> None:
    body, status, words = BAD_INPUTS[name]
    if isinstance(body, bytes):
        resp = http.post("/predict", content=body, headers={"content-type": "application/json"})
    else:
        resp = http.post("/predict", json=body)
    assert resp.status_code == status, resp.text
    assert words.replace('"', '\\"') in message(resp), resp.text


def test_bad_input_with_bentoml_client_raises_400(server: dict[str, Any]) -> None:
    import bentoml
    from bentoml.exceptions import BentoMLException

    with bentoml.SyncHTTPClient(server["url"]) as client:
        with pytest.raises(BentoMLException) as info:
            client.predict(images=[image(at=(0, 0), value=17)])
    assert info.value.error_code == 400 and "out of range" in str(info.value)


def test_61_mb_body_is_refused_unread(http: httpx.Client) -> None:
    body = b'{"images": [' + b"0," * (61 * 1024 * 1024 // 2) + b"0]}"
    start = time.perf_counter()
    resp = http.post("/predict", content=body, headers={"content-type": "application/json"})
    elapsed = time.perf_counter() - start
    assert resp.status_code == 413, resp.text
    assert "request body too large" in resp.json()["error"] and str(MAX_BODY_BYTES) in resp.json()["error"]
    assert elapsed < 5, f"took {elapsed:.1f} s"


def test_chunked_body_over_the_limit_is_cut_off(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"images": ['
        for _ in range(4 * MAX_BODY_BYTES // 65536):  # 4x the limit, no Content-Length
            yield b" " * 65536

    resp = http.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413, resp.text
    assert "request body too large" in resp.json()["error"]


def test_concurrent_requests_are_batched(http: httpx.Client, server: dict[str, Any], model_dir: Path,
                                         digits: np.ndarray) -> None:
    def batch_histogram() -> tuple[float, float]:
        text = http.get("/metrics").text
        lines = [ln for ln in text.splitlines() if "adaptive_batch_size" in ln and 'method_name="infer"' in ln]
        total = sum(float(ln.rsplit(" ", 1)[1]) for ln in lines if "_sum{" in ln)
        count = sum(float(ln.rsplit(" ", 1)[1]) for ln in lines if "_count{" in ln)
        return total, count

    expected = onnx_reference(model_dir, digits)
    before = batch_histogram()
    with httpx.Client(base_url=server["url"], timeout=30,
                      limits=httpx.Limits(max_connections=16)) as client, ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda i: client.post("/predict", json={"images": [digits[i % 40].tolist()]}),
                                  range(96)))
    assert [r.status_code for r in responses] == [200] * 96
    for i, resp in enumerate(responses):
        check_predictions(resp.json(), expected[i % 40: i % 40 + 1])
    after = batch_histogram()
    requests, batches = after[0] - before[0], after[1] - before[1]
    assert requests == 96 and batches < requests, f"{requests} requests in {batches} batches"


def test_server_alive_after_bad_inputs_and_log_quiet(http: httpx.Client, server: dict[str, Any],
                                                      model_dir: Path, digits: np.ndarray) -> None:
    resp = http.post("/predict", json={"images": digits[:3].tolist()})
    assert resp.status_code == 200
    check_predictions(resp.json(), onnx_reference(model_dir, digits[:3]))
    assert server["proc"].poll() is None
    log = server["log"].read_text()
    assert "Traceback" not in log, log[-3000:]  # rejected requests log one INFO line, not a stack
    assert "rejected (" in log


# ---- loading, without a server -------------------------------------------------------------------


def test_load_model_verifies_the_onnx_checksum(model_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "deploy"
    shutil.copytree(model_dir, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["onnx_sha256"] = "0" * 64
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="sha256"):
        load_model({"DLOPS_MODEL_DIR": str(bad)})
    with pytest.raises(ModelLoadError, match="manifest.json: not found"):
        load_model({"DLOPS_MODEL_DIR": str(tmp_path / "nowhere")})


def test_model_dir_defaults_to_artifacts_deploy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_model_dir({}) == ((tmp_path / "artifacts" / "deploy").resolve(),
                                     str((tmp_path / "artifacts" / "deploy").resolve()))


def test_model_uri_downloads_from_mlflow(model_dir: Path, mlflow_uri: str) -> None:
    import mlflow

    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(model_dir), artifact_path="deploy")
    loaded = load_model({"DLOPS_MODEL_URI": f"runs:/{run.info.run_id}/deploy"})
    assert loaded.manifest["model_name"] == "dlops-digits-demo"
    assert loaded.source == f"runs:/{run.info.run_id}/deploy"


def test_build_bento_returns_its_tag(model_dir: Path, tmp_path: Path) -> None:
    from serving.build import build_bento

    root = Path(__file__).resolve().parents[1]
    project = tmp_path / "project"
    from serving.build import copy_sources

    copy_sources(root, project)
    shutil.copytree(model_dir, project / "artifacts" / "deploy")
    home = tmp_path / "bentoml_home"
    tag = build_bento(project, home)
    name, version = tag.split(":")
    bento = home / "bentos" / name / version
    assert name == "dlops-digits" and (bento / "bento.yaml").is_file()
    assert (bento / "src" / "artifacts" / "deploy" / "model.onnx").is_file()
    assert not (bento / "src" / "serving" / "fixtures.py").exists()
    assert not (bento / "src" / "tests").exists()  # test helpers (tests/helpers.py) never ship
    assert "ENV BENTOML_HOST" in (bento / "env" / "docker" / "Dockerfile").read_text()
