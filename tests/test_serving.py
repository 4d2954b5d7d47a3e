"""The BentoML service, served for real: `bentoml serve serving.service:Predictor` in a subprocess on a
free 127.0.0.1 port, over a small exported ONNX image model, queried over HTTP (httpx: the routes are
plain FastAPI routes mounted with bentoml.asgi_app); predictions are checked against ONNX Runtime run
in-process on the same inputs."""

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
from serving.model import ModelLoadError, load_model, resolve_model_dir, sha256_file
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


def test_predict_one_image(http: httpx.Client, model_dir: Path, digits: np.ndarray) -> None:
    assert http.get("/readyz").status_code == 200
    resp = http.post("/predict", json={"images": digits[:1].tolist()})
    assert resp.status_code == 200, resp.text
    result = resp.json()
    check_predictions(result, onnx_reference(model_dir, digits[:1]))
    identity = (result["model_name"], result["model_version"], result["model_alias"])
    assert identity == ("dlops-digits-demo", "7", "champion")
    assert (result["task"], result["target"], result["decision_threshold"], result["notes"]) == (
        "classification", None, None, {})
    assert set(result["predictions"][0]) == {"label", "class_index", "probability", "probabilities"}
    assert result["predictions"][0]["probability"] == max(result["predictions"][0]["probabilities"])


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


def test_bad_input_error_body_is_one_string(http: httpx.Client) -> None:
    resp = http.post("/predict", json={"images": [image(at=(0, 0), value=17)]})
    assert resp.status_code == 400 and resp.headers["content-type"].startswith("application/json")
    assert list(resp.json()) == ["error"] and "out of range" in resp.json()["error"]


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


def test_concurrent_requests_all_answered_correctly(server: dict[str, Any], model_dir: Path,
                                                    digits: np.ndarray) -> None:
    """96 requests from 16 clients at once (under DLOPS_MAX_INFLIGHT): every one 200 with its own prediction."""
    expected = onnx_reference(model_dir, digits)
    with httpx.Client(base_url=server["url"], timeout=30,
                      limits=httpx.Limits(max_connections=16)) as client, ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda i: client.post("/predict", json={"images": [digits[i % 40].tolist()]}),
                                  range(96)))
    assert [r.status_code for r in responses] == [200] * 96
    for i, resp in enumerate(responses):
        check_predictions(resp.json(), expected[i % 40: i % 40 + 1])


def test_server_alive_after_bad_inputs_and_log_quiet(http: httpx.Client, server: dict[str, Any],
                                                      model_dir: Path, digits: np.ndarray) -> None:
    resp = http.post("/predict", json={"images": digits[:3].tolist()})
    assert resp.status_code == 200
    check_predictions(resp.json(), onnx_reference(model_dir, digits[:3]))
    assert server["proc"].poll() is None
    log = server["log"].read_text()
    assert "Traceback" not in log, log[-3000:]  # rejected requests log one INFO line, not a stack
    # one line per rejected request, with its status and reason (BentoML's access log is off by default)
    assert "POST /predict rejected (400): images[0] row 0 column 0: value out of range" in log


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


def test_load_model_refuses_what_it_cannot_serve(model_dir: Path, tmp_path: Path) -> None:
    """Every load failure is a ModelLoadError with one line naming the file and the problem."""
    from serving.model import load_model_from

    def broken(name: str, manifest_edit: dict[str, Any] | None = None, onnx: bytes | None = None) -> Path:
        bad = tmp_path / name
        shutil.copytree(model_dir, bad)
        manifest = json.loads((bad / "manifest.json").read_text())
        if onnx is not None:
            (bad / "model.onnx").write_bytes(onnx)
            manifest["onnx_sha256"] = sha256_file(bad / "model.onnx")
        manifest.update(manifest_edit or {})
        (bad / "manifest.json").write_text(json.dumps(manifest))
        return bad

    cases = {
        "corrupt onnx": (broken("corrupt", onnx=b"not an onnx graph"), "ONNX Runtime cannot load it"),
        "unknown kind": (broken("kind", {"kind": "audio"}), "manifest: unknown modality 'audio'"),
        "unknown task": (broken("task", {"task": "ranking"}), "manifest: unknown task 'ranking'"),
        "missing onnx file": (broken("noonnx", {"onnx_file": "other.onnx"}), "ONNX file named by"),
        "wrong input name": (broken("input", {"input": {"name": "pixels", "shape": [-1, 1, 8, 8],
                                                        "dtype": "float32"}}), "graph inputs ['input']"),
        "not an image input": (broken("shape", {"input": {"name": "input", "shape": [-1, 64], "dtype": "float32"}}),
                               "single-channel images"),
        "wrong output name": (broken("output", {"output": {"name": "probs"}}), "lack the manifest's 'probs'"),
        "missing keys": (broken("keys", {"run_id": None}), None),
    }
    (cases["missing keys"][0] / "manifest.json").write_text(json.dumps(
        {k: v for k, v in json.loads((model_dir / "manifest.json").read_text()).items() if k != "run_id"}))
    cases["missing keys"] = (cases["missing keys"][0], "missing keys ['run_id']")
    for name, (bad, words) in cases.items():
        with pytest.raises(ModelLoadError) as info:
            load_model_from(bad, str(bad))
        assert words in str(info.value) and "\n" not in str(info.value), (name, str(info.value))


def test_model_dir_defaults_to_artifacts_deploy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_model_dir({}) == ((tmp_path / "artifacts" / "deploy").resolve(),
                                     str((tmp_path / "artifacts" / "deploy").resolve()))


def test_model_uri_downloads_from_mlflow(model_dir: Path, mlflow_uri: str) -> None:
    import mlflow

    mlflow.set_tracking_uri(mlflow_uri)  # the service reads MLFLOW_TRACKING_URI; an earlier test may have set mlflow's global
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(model_dir), artifact_path="deploy")
    loaded = load_model({"DLOPS_MODEL_URI": f"runs:/{run.info.run_id}/deploy"})
    assert loaded.manifest["model_name"] == "dlops-digits-demo"
    assert loaded.source == f"runs:/{run.info.run_id}/deploy"


def test_build_bento_returns_its_tag(model_dir: Path, tmp_path: Path) -> None:
    import yaml

    from serving.build import bento_name, build_bento

    root = Path(__file__).resolve().parents[1]
    project = tmp_path / "project"
    from serving.build import copy_sources

    copy_sources(root, project)
    shutil.copytree(model_dir, project / "artifacts" / "deploy")
    home = tmp_path / "bentoml_home"
    tag = build_bento(project, home)
    name, version = tag.split(":")
    bento = home / "bentos" / name / version
    assert name == "dlops-digits-demo" == bento_name(json.loads((model_dir / "manifest.json").read_text()))
    assert (bento / "bento.yaml").is_file()
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["service"] == "serving.service:Predictor"
    assert info["labels"]["kind"] == "image" and info["labels"]["task"] == "classification"
    assert (bento / "src" / "artifacts" / "deploy" / "model.onnx").is_file()
    assert not (bento / "src" / "serving" / "fixtures.py").exists()
    assert not (bento / "src" / "tests").exists()  # test helpers (tests/helpers.py) never ship
    assert "ENV BENTOML_HOST" in (bento / "env" / "docker" / "Dockerfile").read_text()
