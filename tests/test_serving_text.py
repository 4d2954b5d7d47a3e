"""The BentoML service over a text model, served for real: `bentoml serve serving.service:Predictor` in a subprocess
on a free 127.0.0.1 port over a tiny English + Chinese model (WordLevel tokenizer.json, bag-of-embeddings
net exported with both input axes dynamic, manifest.json). Predictions are checked against
pipelines.modalities.text.encode.encode + ONNX Runtime run in-process on the full max_len-wide ids."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pytest

from tests.helpers import build_text_model
from serving.model import MANIFEST, ModelLoadError, load_model, service_for
from pipelines.modalities.text.serve import MAX_BODY_BYTES, MAX_TEXT_CHARS, MAX_TEXTS

ROOT = Path(__file__).resolve().parents[1]
MAX_LEN, THRESHOLD = 16, 0.46
LONG_EN = "worst purchase ever , the battery died and support was terrible " * 3  # 33 tokens
LONG_ZH = "这部电影太好看了" * (MAX_TEXT_CHARS // 8)  # exactly the character limit, 10,000 tokens
TEXTS = ["这部电影太好看了", "worst purchase ever", "好", "great", "the food was good but the service was slow",
         "服务很差，再也不来了", "I love this phone", "质量很好，物流也很快 and fast shipping", "hello world",
         "价格便宜但是质量一般", LONG_EN, "太失望了"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_text_model(tmp_path_factory.mktemp("deploy"), max_len=MAX_LEN, threshold=THRESHOLD)


def reference(model_dir: Path, texts: list[str]) -> dict[str, Any]:
    """Probabilities, labels, token counts and truncation flags straight from encode + ONNX Runtime,
    on ids padded to the full max_len (the service trims padding columns; the result must not move)."""
    import onnxruntime as ort

    from pipelines.modalities.text.encode import encode, load_tokenizer

    ids, lengths, truncated = encode(load_tokenizer(model_dir / "tokenizer.json"), texts, MAX_LEN)
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"input": ids})[0].astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    labels = ["positive" if p >= THRESHOLD else "negative" for p in probs[:, 1]]
    from pipelines.modalities.text.serve import unknown_notes

    ids[lengths == 0, 0] = 1  # a text without tokens is read as one <unk>, as the service does
    shares, notes = unknown_notes(ids, lengths)
    return {"probs": probs, "labels": labels, "tokens": lengths.tolist(), "truncated": truncated.tolist(),
            "unknown_share": shares, "note": notes}


def check(result: dict[str, Any], model_dir: Path, texts: list[str]) -> None:
    want = reference(model_dir, texts)
    preds = result["predictions"]
    np.testing.assert_allclose(np.array([p["probabilities"] for p in preds]), want["probs"], rtol=1e-5, atol=1e-6)
    assert [p["label"] for p in preds] == want["labels"]
    assert [p["tokens"] for p in preds] == want["tokens"] and [p["truncated"] for p in preds] == want["truncated"]
    assert [p["unknown_share"] for p in preds] == want["unknown_share"] and [p["note"] for p in preds] == want["note"]
    assert result["notes"] == {"truncated": sum(want["truncated"]), "no_tokens": want["tokens"].count(0),
                               "mostly_unknown": sum(n is not None for n in want["note"]), "max_len": MAX_LEN}
    assert result["classes"] == ["negative", "positive"] and result["decision_threshold"] == THRESHOLD


def test_one_text(http: httpx.Client, model_dir: Path) -> None:
    assert http.get("/readyz").status_code == 200
    resp = http.post("/predict", json={"texts": ["这部电影太好看了"]})
    assert resp.status_code == 200, resp.text
    result = resp.json()
    check(result, model_dir, ["这部电影太好看了"])
    assert set(result["predictions"][0]) == {"label", "class_index", "probability", "probabilities", "tokens",
                                             "truncated", "unknown_share", "note"}
    assert result["task"] == "classification" and result["target"] is None
    assert (result["model_name"], result["model_version"], result["model_alias"]) == ("dlops-text-demo", "4",
                                                                                      "champion")


def test_many_english_and_chinese_texts(http: httpx.Client, model_dir: Path) -> None:
    resp = http.post("/predict", json={"texts": TEXTS})
    assert resp.status_code == 200, resp.text
    check(resp.json(), model_dir, TEXTS)
    want = reference(model_dir, TEXTS)
    # the threshold decides, not argmax (fixed seed): some texts have THRESHOLD <= P(positive) < 0.5
    assert any(THRESHOLD <= p < 0.5 for p in want["probs"][:, 1])
    assert len(set(want["labels"])) == 2


def truncated_total(http: httpx.Client) -> float:
    lines = [ln for ln in http.get("/metrics").text.splitlines()
             if ln.startswith("dlops_input_notes_total{") and 'note="truncated"' in ln]
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


def test_short_and_very_long_text_in_one_request_truncation_reported(http: httpx.Client, model_dir: Path) -> None:
    texts = ["好", LONG_ZH, LONG_EN, "great"]
    before = truncated_total(http)
    resp = http.post("/predict", json={"texts": texts})
    assert resp.status_code == 200, resp.text
    result = resp.json()
    check(result, model_dir, texts)
    assert [(p["tokens"], p["truncated"]) for p in result["predictions"]] == [
        (1, False), (MAX_LEN, True), (MAX_LEN, True), (1, False)]
    assert result["notes"]["truncated"] == 2 and truncated_total(http) - before == 2
    # a short text's prediction does not depend on the long one it was batched with
    alone = http.post("/predict", json={"texts": ["好"]}).json()["predictions"][0]
    np.testing.assert_allclose(alone["probabilities"], result["predictions"][0]["probabilities"], rtol=1e-6)


def test_metadata_and_docs(http: httpx.Client, model_dir: Path) -> None:
    manifest = json.loads((model_dir / MANIFEST).read_text())
    meta = http.get("/metadata").json()
    for key in ("model_name", "version", "alias", "kind", "task", "classes", "decision_threshold", "metrics",
                "input", "output", "created_at"):
        assert meta[key] == manifest[key], key
    assert meta["lineage"] == {k: manifest[k] for k in ("run_id", "data_hash", "git_sha", "onnx_sha256")}
    assert meta["limits"] == {"max_texts": MAX_TEXTS, "max_text_chars": MAX_TEXT_CHARS, "max_len": MAX_LEN,
                              "max_body_bytes": MAX_BODY_BYTES}
    spec = http.get("/docs.json").json()
    assert "/metadata" in spec["paths"] and "/predict" in spec["paths"]
    body = json.dumps(spec["paths"]["/predict"]["post"]["requestBody"])
    assert "texts" in body and f'"maxItems": {MAX_TEXTS}' in body and f'"maxLength": {MAX_TEXT_CHARS}' in body
    assert http.get("/docs", follow_redirects=True).status_code == 200


BAD_INPUTS = {
    # name: (body: JSON-able or raw bytes, expected words in the message)
    "empty string": ({"texts": ["fine", ""]}, "texts[1]: empty text"),
    "number": ({"texts": ["fine", 42]}, "texts[1]: expected a string, got int 42"),
    "null": ({"texts": [None, "fine"]}, "texts[0]: expected a string, got null"),
    "list": ({"texts": ["a", "b", ["c"]]}, "texts[2]: expected a string, got list of length 1"),
    "boolean": ({"texts": [True]}, "texts[0]: expected a string, got bool"),
    "object": ({"texts": [{"text": "a"}]}, "texts[0]: expected a string, got dict"),
    "bare string": ({"texts": "hello"}, 'wrap it in a list: {\\"texts\\": [\\"...\\"]}'),
    "texts null": ({"texts": None}, "texts: expected a list of strings, got null"),
    "empty list": ({"texts": []}, f"expected 1 to {MAX_TEXTS} texts per request, got 0"),
    "too many texts": ({"texts": ["a"] * (MAX_TEXTS + 1)}, f"got {MAX_TEXTS + 1}"),
    "text too long": ({"texts": ["ok", "x" * (MAX_TEXT_CHARS + 1)]},
                      f"texts[1]: text too long: {MAX_TEXT_CHARS + 1} characters, the limit is {MAX_TEXT_CHARS}"),
    "missing field": ({}, "Field required"),
    "wrong field": ({"text": ["a"]}, "Field required"),
    "not an object": (["a"], "Input should be an object"),
    "invalid JSON": (b'{"texts": ["a"', "Invalid JSON"),
    # json.loads takes a lone surrogate escape; the string check then refuses it, naming the text
    "lone surrogate": (b'{"texts": ["\\ud800"]}', ("Invalid JSON", "texts.0: Input should be a valid string")),
    "invalid UTF-8": (b'{"texts": ["\xff\xfe"]}', "Invalid JSON"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_gets_400_naming_the_problem(http: httpx.Client, name: str) -> None:
    body, words = BAD_INPUTS[name]
    if isinstance(body, bytes):
        resp = http.post("/predict", content=body, headers={"content-type": "application/json"})
    else:
        resp = http.post("/predict", json=body)
    assert resp.status_code == 400, resp.text
    assert any(w in resp.text for w in ((words,) if isinstance(words, str) else words)), resp.text


def test_body_over_the_limit_is_413(http: httpx.Client) -> None:
    resp = http.post("/predict", content=b" " * (MAX_BODY_BYTES + 1), headers={"content-type": "application/json"})
    assert resp.status_code == 413 and "request body too large" in resp.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: cut off as it arrives
        for _ in range(2 * MAX_BODY_BYTES // 65536):
            yield b" " * 65536

    resp = http.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413 and "request body too large" in resp.json()["error"]


def test_a_full_request_fits_the_body_limit(http: httpx.Client) -> None:
    """MAX_TEXTS texts of MAX_TEXT_CHARS CJK characters, as UTF-8 JSON: accepted, every text truncated."""
    body = json.dumps({"texts": [LONG_ZH] * MAX_TEXTS}, ensure_ascii=False).encode()
    assert len(body) <= MAX_BODY_BYTES
    resp = http.post("/predict", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 200, resp.text[:500]
    assert resp.json()["notes"]["truncated"] == MAX_TEXTS


def test_concurrent_requests_of_different_lengths_all_answered_correctly(server: dict[str, Any],
                                                                         model_dir: Path) -> None:
    """96 requests of different lengths from 16 clients at once: every one 200 with its own prediction."""
    texts = TEXTS + [LONG_ZH[:300]]
    want = reference(model_dir, texts)
    with httpx.Client(base_url=server["url"], timeout=30,
                      limits=httpx.Limits(max_connections=16)) as client, ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda i: client.post("/predict", json={"texts": [texts[i % len(texts)]]}),
                                  range(96)))
    assert [r.status_code for r in responses] == [200] * 96
    for i, resp in enumerate(responses):
        k = i % len(texts)
        pred = resp.json()["predictions"][0]
        np.testing.assert_allclose(pred["probabilities"], want["probs"][k], rtol=1e-5, atol=1e-6)
        assert (pred["label"], pred["tokens"], pred["truncated"]) == (want["labels"][k], want["tokens"][k],
                                                                      want["truncated"][k])


def test_server_alive_after_bad_inputs_and_log_quiet(http: httpx.Client, server: dict[str, Any],
                                                      model_dir: Path) -> None:
    resp = http.post("/predict", json={"texts": TEXTS[:3]})
    assert resp.status_code == 200
    check(resp.json(), model_dir, TEXTS[:3])
    assert server["proc"].poll() is None
    log = server["log"].read_text()
    assert "Traceback" not in log, log[-3000:]  # rejected requests log one INFO line, not a stack
    # one line per rejected request, with its status and reason (BentoML's access log is off by default)
    assert "POST /predict rejected (400): " in log


def test_text_without_tokens_is_read_as_unknown_and_flagged(http: httpx.Client, model_dir: Path) -> None:
    """Whitespace and control characters give the tokenizer nothing: the model reads one unknown token,
    and the response says so (tokens 0, notes.no_tokens) instead of refusing the request."""
    resp = http.post("/predict", json={"texts": ["fine", " \t\n\u3000 ", "\x00\x07"]})
    assert resp.status_code == 200, resp.text
    result = resp.json()
    assert [p["tokens"] for p in result["predictions"]][1:] == [0, 0] and result["notes"]["no_tokens"] == 2
    assert result["predictions"][1]["probabilities"] == result["predictions"][2]["probabilities"]
    assert all(p["note"].startswith("no tokens:") for p in result["predictions"][1:])


def test_text_mostly_unknown_to_the_model_is_flagged(http: httpx.Client, model_dir: Path) -> None:
    """Emoji only: every token is <unk>, so the prediction is the model's prior and the response says so."""
    result = http.post("/predict", json={"texts": ["😀😀", "这部电影太好看了"]}).json()
    check(result, model_dir, ["😀😀", "这部电影太好看了"])
    emoji, film = result["predictions"]
    assert emoji["unknown_share"] == 1.0 and "mostly unknown to the model" in emoji["note"]
    assert film["unknown_share"] == 0.0 and film["note"] is None and result["notes"]["mostly_unknown"] == 1


# ---- without a server -----------------------------------------------------------------------------


def test_trim_padding_keeps_every_used_column() -> None:
    from pipelines.modalities.text.serve import trim_padding

    ids = np.array([[5, 6, 0, 0, 0], [7, 0, 0, 0, 0], [3, 4, 9, 0, 0]], np.int64)
    assert trim_padding(ids).tolist() == ids[:, :3].tolist()
    assert trim_padding(ids[1:2]).tolist() == [[7, 0]]  # never narrower than 2: exported dims are traced >= 2
    assert trim_padding(np.zeros((2, 4), np.int64)).shape == (2, 2)
    assert trim_padding(np.ones((1, 4), np.int64)).shape == (1, 4)
    assert trim_padding(np.ones((3, 1), np.int64)).shape == (3, 1)  # max_len 1: nothing to trim


def test_load_model_checks_the_text_contract(model_dir: Path, tmp_path: Path) -> None:
    loaded = load_model({"DLOPS_MODEL_DIR": str(model_dir)})
    assert type(loaded.requests).__name__ == "TextRequests" and loaded.requests.max_len == MAX_LEN
    assert loaded.requests.tokenizer.token_to_id("<pad>") == 0
    assert service_for(loaded.manifest) == "serving.service:Predictor"
    (tmp_path / "notok").mkdir()
    for name in ("model.onnx", MANIFEST):
        shutil.copy(model_dir / name, tmp_path / "notok" / name)
    with pytest.raises(ModelLoadError, match="tokenizer.json: tokenizer named by the manifest not found"):
        load_model({"DLOPS_MODEL_DIR": str(tmp_path / "notok")})
    bad = tmp_path / "deploy"
    shutil.copytree(model_dir, bad)
    (bad / "tokenizer.json").write_text((bad / "tokenizer.json").read_text().replace('"great"', '"grand"'))
    with pytest.raises(ModelLoadError, match="tokenizer_sha256"):
        load_model({"DLOPS_MODEL_DIR": str(bad)})
    manifest = json.loads((bad / MANIFEST).read_text())
    manifest["input"].pop("max_len")
    (bad / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="max_len"):
        load_model({"DLOPS_MODEL_DIR": str(bad)})


def test_model_uri_finds_manifest_and_tokenizer_in_extra_files(model_dir: Path, mlflow_uri: str) -> None:
    """Deploy logs the model with mlflow.onnx (model.onnx at the root) and manifest.json + tokenizer.json
    as extra files, which land in extra_files/."""
    import mlflow

    mlflow.set_tracking_uri(mlflow_uri)  # the service reads MLFLOW_TRACKING_URI; an earlier test may have set mlflow's global
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(model_dir / "model.onnx"), artifact_path="model")
        for name in (MANIFEST, "tokenizer.json"):
            mlflow.log_artifact(str(model_dir / name), artifact_path="model/extra_files")
    env = {"DLOPS_MODEL_URI": f"runs:/{run.info.run_id}/model"}
    loaded = load_model(env)
    resolved = Path(env["DLOPS_RESOLVED_MODEL_DIR"])  # resolve_model_dir leaves the download dir there
    assert loaded.manifest["kind"] == "text" and loaded.requests.tokenizer is not None
    assert (resolved / "tokenizer.json").is_file() and (resolved / "model.onnx").is_file()  # gathered together
    assert loaded.source == f"runs:/{run.info.run_id}/model"


def test_service_is_chosen_from_the_manifest(model_dir: Path) -> None:
    import os

    out = subprocess.run([sys.executable, "-m", "serving.build", "--print-service"], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "DLOPS_MODEL_DIR": str(model_dir)}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "serving.service:Predictor"  # one service for every kind


def test_build_bento_is_named_after_the_model_and_ships_the_tokenizer(model_dir: Path, tmp_path: Path) -> None:
    import yaml

    from serving.build import bento_name, build_bento

    project = tmp_path / "project"
    from serving.build import copy_sources

    copy_sources(ROOT, project)
    shutil.copytree(model_dir, project / "artifacts" / "deploy")
    home = tmp_path / "bentoml_home"
    name, version = build_bento(project, home).split(":")
    bento = home / "bentos" / name / version
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert name == bento_name(json.loads((model_dir / MANIFEST).read_text())) == "dlops-text-demo"
    assert info["service"] == "serving.service:Predictor" and info["labels"]["kind"] == "text"
    for path in ("serving/service.py", "pipelines/modalities/text/serve.py", "pipelines/modalities/text/encode.py",
                 "artifacts/deploy/tokenizer.json", "artifacts/deploy/manifest.json"):
        assert (bento / "src" / path).is_file(), path
    assert not (bento / "src" / "serving" / "fixtures.py").exists()
    assert not (bento / "src" / "tests").exists()  # test helpers (tests/helpers.py) never ship
    # the request side ships, the training side's heavy modules do not
    assert not (bento / "src" / "pipelines" / "train.py").exists()
    assert "tokenizers==" in (bento / "env" / "python" / "requirements.txt").read_text()
