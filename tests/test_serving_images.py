"""The BentoML service over models of image *files*, served for real: `bentoml serve serving.service:Predictor`
in a subprocess over tiny untrained CNNs whose manifest input has ``"image": {"size", "channels"}`` (an RGB
32x32 and a grayscale 28x24 model, tests.helpers.build_photo_model).

Parity goes from file bytes to probabilities: ``decode.decode`` (the code collect used on the training
files) + ONNX Runtime in-process against what the service answers for the same bytes, uploaded as
``multipart/form-data`` and as base64 JSON. Bad uploads (corrupt, truncated, empty, not an image, a
decompression bomb, too large, too many, broken multipart) get a 4xx naming the file, and the server
keeps serving with no traceback in its log. The grayscale model's run is marked ``slow`` (~13 s a model)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from pipelines.modalities.image.decode import decode
from pipelines.modalities.image.serve import MAX_FILE_BYTES, MAX_FILES, MAX_FILES_BODY_BYTES
from serving.model import MANIFEST, ModelLoadError, load_model
from tests.helpers import build_photo_model, serving

SHAPES = {"rgb": (3, (32, 32)), "gray": (1, (28, 24))}


def image_bytes(mode: str = "RGB", size: tuple[int, int] = (40, 30), fmt: str = "PNG", seed: int = 0) -> bytes:
    """A noise image of ``size`` (width, height) in ``mode``, saved as ``fmt``."""
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    img = Image.fromarray(pixels, "RGBA")
    img = img.convert(mode) if mode != "P" else img.convert("RGB").quantize(16)
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


# name -> bytes: formats, modes and sizes a user uploads (none of them the model's size)
FILES = {
    "cat.png": image_bytes("RGB", (40, 30), "PNG", 1),
    "dog.jpg": image_bytes("RGB", (64, 48), "JPEG", 2),
    "gray.png": image_bytes("L", (20, 20), "PNG", 3),
    "alpha.png": image_bytes("RGBA", (33, 17), "PNG", 4),
    "palette.gif": image_bytes("P", (16, 16), "GIF", 5),
    "photo.webp": image_bytes("RGB", (50, 50), "WEBP", 6),
    "猫 1.bmp": image_bytes("RGB", (8, 12), "BMP", 7),
}


@pytest.fixture(scope="module", params=["rgb", pytest.param("gray", marks=pytest.mark.slow)])
def photo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A served photo model: ``{"kind", "model_dir", "url", "log", "proc", "http"}``."""
    channels, size = SHAPES[request.param]
    model_dir = build_photo_model(tmp_path_factory.mktemp(f"deploy-{request.param}"), channels=channels, size=size)
    with serving(model_dir, tmp_path_factory.mktemp(f"serve-{request.param}")) as info, \
            httpx.Client(base_url=info["url"], timeout=60) as http:
        yield {**info, "kind": request.param, "model_dir": model_dir, "http": http}


def reference(model_dir: Path, files: dict[str, bytes]) -> np.ndarray:
    """Probabilities straight from decode.decode + ONNX Runtime, as batch prediction computes them."""
    import onnxruntime as ort

    spec = json.loads((model_dir / MANIFEST).read_text())["input"]["image"]
    batch = np.stack([decode(data, name, tuple(spec["size"]), spec["channels"]) for name, data in files.items()])
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"input": batch.astype(np.float32)})[0].astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True)


def check(resp: httpx.Response, model_dir: Path, files: dict[str, bytes]) -> None:
    assert resp.status_code == 200, resp.text[:500]
    preds = resp.json()["predictions"]
    assert [p["name"] for p in preds] == list(files)
    np.testing.assert_allclose(np.array([p["probabilities"] for p in preds]), reference(model_dir, files),
                               rtol=1e-5, atol=1e-6)
    classes = resp.json()["classes"]
    assert [p["label"] for p in preds] == [classes[k] for k in reference(model_dir, files).argmax(axis=1)]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def upload(http: httpx.Client, files: dict[str, bytes], field: str = "file") -> httpx.Response:
    return http.post("/predict", files=[(field, (name, data, "application/octet-stream"))
                                        for name, data in files.items()])


# ---- parity: file bytes -> probabilities ---------------------------------------------------------------


def test_multipart_upload_of_one_file(photo: dict[str, Any]) -> None:
    files = {"cat.png": FILES["cat.png"]}
    check(upload(photo["http"], files), photo["model_dir"], files)


def test_multipart_upload_of_many_formats_any_field_name(photo: dict[str, Any]) -> None:
    http = photo["http"]
    check(upload(http, FILES), photo["model_dir"], FILES)
    mixed = http.post("/predict", files=[(f"field{i}", (n, d)) for i, (n, d) in enumerate(FILES.items())])
    check(mixed, photo["model_dir"], FILES)


def test_base64_json_of_many_files(photo: dict[str, Any]) -> None:
    resp = photo["http"].post("/predict", json={"images": [{"name": n, "data": b64(d)} for n, d in FILES.items()]})
    check(resp, photo["model_dir"], FILES)


def test_base64_json_without_names_data_url_and_line_breaks(photo: dict[str, Any]) -> None:
    data = FILES["dog.jpg"]
    wrapped = "\n".join(b64(data)[i:i + 76] for i in range(0, len(b64(data)), 76))  # as `base64` prints it
    resp = photo["http"].post("/predict", json={"images": [{"data": b64(data)}, {"data": wrapped},
                                                           {"data": "data:image/jpeg;base64," + b64(data)}]})
    check(resp, photo["model_dir"], {"images[0]": data, "images[1]": data, "images[2]": data})


def test_the_most_files_in_one_request(photo: dict[str, Any]) -> None:
    files = {f"img{i:02d}.png": image_bytes("RGB", (24 + i, 20), "PNG", 100 + i) for i in range(MAX_FILES)}
    check(upload(photo["http"], files), photo["model_dir"], files)


# ---- bad uploads: 4xx naming the file ------------------------------------------------------------------


def bomb_png() -> bytes:
    """8000 x 8000 black pixels in ~60 KB: over decode.MAX_PIXELS (50 million)."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (8000, 8000)).save(out, format="PNG", optimize=False)
    return out.getvalue()


BAD_FILES = {
    # name: (bytes, words the error holds after "<name>: ")
    "corrupt.png": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, ("not an image", "corrupt")),
    "truncated.jpg": (FILES["dog.jpg"][: len(FILES["dog.jpg"]) // 2], ("corrupt or truncated",)),
    "empty.png": (b"", ("empty file",)),
    "notes.txt": (b"these are not pixels\n", ("not an image",)),
    "huge.png": (None, ("over the limit",)),  # MAX_FILE_BYTES + 1
    "bomb.png": (None, ("decompression bomb",)),
}


def bad_file(name: str) -> bytes:
    data = BAD_FILES[name][0]
    if name == "huge.png":
        return FILES["cat.png"] + b"\0" * (MAX_FILE_BYTES + 1 - len(FILES["cat.png"]))
    return bomb_png() if name == "bomb.png" else data


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_upload_is_400_naming_the_file(photo: dict[str, Any], name: str) -> None:
    """Multipart (after a good file) and base64 JSON alike: the first file that cannot be used is named."""
    data = bad_file(name)
    for resp in (upload(photo["http"], {"cat.png": FILES["cat.png"], name: data}),
                 photo["http"].post("/predict", json={"images": [{"name": "cat.png", "data": b64(FILES["cat.png"])},
                                                                 {"name": name, "data": b64(data)}]})):
        assert resp.status_code == 400, resp.text[:300]
        error = resp.json()["error"]
        assert error.startswith(f"{name}: ") and any(w in error for w in BAD_FILES[name][1]), error


def multipart(boundary: bytes, parts: list[tuple[bytes, bytes]], close: bool = True) -> bytes:
    """A raw multipart body of ``(Content-Disposition parameters, content)`` parts."""
    body = b"".join(b"--" + boundary + b"\r\nContent-Disposition: form-data; " + params + b"\r\n\r\n" + data
                    + b"\r\n" for params, data in parts)
    return body + (b"--" + boundary + b"--\r\n" if close else b"")


ONE = [(b'name="file"; filename="cat.png"', FILES["cat.png"])]
BAD_MULTIPART = {
    # name: (content type, body, words in the error)
    "missing boundary": ("multipart/form-data", multipart(b"b", ONE), "without a boundary"),
    "empty boundary": ("multipart/form-data; boundary=", multipart(b"b", ONE), "without a boundary"),
    "quoted empty boundary": ('multipart/form-data; boundary=""', multipart(b"b", ONE), "without a boundary"),
    "wrong boundary": ("multipart/form-data; boundary=other", multipart(b"b", ONE), "no part starting with"),
    "no closing boundary": ("multipart/form-data; boundary=b", multipart(b"b", ONE, close=False),
                            "before its closing boundary"),
    "garbage body": ("multipart/form-data; boundary=b", b"\x00\xff--b\r\n\r\n\r\n--", "no part starting with"),
    "no headers end": ("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data\r\n--b--",
                       "no end of its headers"),
    "no disposition": ("multipart/form-data; boundary=b", b"--b\r\nX: y\r\n\r\ndata\r\n--b--\r\n",
                       "Content-Disposition"),
    "no files": ("multipart/form-data; boundary=b", b"--b--\r\n", "expected 1 to"),
    "a plain form field": ("multipart/form-data; boundary=b", multipart(b"b", ONE + [(b'name="note"', b"hi")]),
                           "form field 'note' is not a file"),
    "too many files": ("multipart/form-data; boundary=b", multipart(b"b", ONE * (MAX_FILES + 1)),
                       f"more than {MAX_FILES} parts"),
    "1,001 parts": ("multipart/form-data; boundary=b", multipart(b"b", [(b'name="f"; filename="x"', b"")] * 1001),
                    f"more than {MAX_FILES} parts"),
}


@pytest.mark.parametrize("name", list(BAD_MULTIPART))
def test_broken_multipart_is_400(photo: dict[str, Any], name: str) -> None:
    content_type, body, words = BAD_MULTIPART[name]
    resp = photo["http"].post("/predict", content=body, headers={"content-type": content_type})
    assert resp.status_code == 400, resp.text[:300]
    assert words in resp.json()["error"], resp.json()


BAD_JSON = {
    "a bare base64 string": ({"images": [b64(FILES["cat.png"])]}, 'images[0]: expected an object {"name"'),
    "nested pixel lists": ({"images": [[[0] * 32] * 32]}, "images[0]: expected an object"),
    "not base64": ({"images": [{"name": "x.png", "data": "not base64!"}]}, "x.png: data is not valid base64"),
    "data missing": ({"images": [{"name": "x.png"}]}, "x.png: data: expected the file's bytes as a base64 string"),
    "unknown field": ({"images": [{"name": "x.png", "data": "", "size": 3}]}, "x.png: unknown field 'size'"),
    "name not a string": ({"images": [{"name": 7, "data": ""}]}, "images[0].name: expected a file name"),
    "no images": ({"images": []}, "expected 1 to"),
    "too many images": ({"images": [{"data": ""}] * (MAX_FILES + 1)}, f"expected 1 to {MAX_FILES} images"),
}


@pytest.mark.parametrize("name", list(BAD_JSON))
def test_bad_json_is_400_naming_the_image(photo: dict[str, Any], name: str) -> None:
    body, words = BAD_JSON[name]
    resp = photo["http"].post("/predict", json=body)
    assert resp.status_code == 400, resp.text[:300]
    assert words in resp.json()["error"], resp.json()


@pytest.mark.parametrize("content_type", ["text/plain", "image/png", "application/octet-stream", None,
                                          "multipart/mixed; boundary=b"])
def test_other_content_types_are_415(photo: dict[str, Any], content_type: str | None) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    resp = photo["http"].post("/predict", content=FILES["cat.png"], headers=headers)
    assert resp.status_code == 415, resp.text
    assert resp.json()["error"].endswith("send application/json or multipart/form-data")


def test_body_over_the_limit_is_413(photo: dict[str, Any]) -> None:
    resp = photo["http"].post("/predict", content=b"\0" * (MAX_FILES_BODY_BYTES + 1),
                              headers={"content-type": "multipart/form-data; boundary=b"})
    assert resp.status_code == 413 and "request body too large" in resp.json()["error"]


# ---- the contract: /metadata, /docs, refusing a model that breaks it -----------------------------------


def test_metadata_and_docs_show_both_request_formats(photo: dict[str, Any]) -> None:
    http = photo["http"]
    meta = http.get("/metadata").json()
    assert meta["input"]["image"]["channels"] == SHAPES[photo["kind"]][0]
    assert meta["limits"] == {"max_images": MAX_FILES, "max_body_bytes": MAX_FILES_BODY_BYTES,
                              "max_file_bytes": MAX_FILE_BYTES}
    spec = http.get("/docs.json").json()["paths"]["/predict"]["post"]
    content = spec["requestBody"]["content"]
    assert content["multipart/form-data"]["schema"]["properties"]["file"]["items"]["format"] == "binary"
    item = content["application/json"]["schema"]["properties"]["images"]["items"]
    assert set(item["properties"]) == {"name", "data"} and item["required"] == ["data"]


def test_load_refuses_a_manifest_whose_image_contract_does_not_match(tmp_path: Path) -> None:
    model_dir = build_photo_model(tmp_path / "m", channels=1, size=(16, 16))
    manifest = json.loads((model_dir / MANIFEST).read_text())
    manifest["input"]["image"]["channels"] = 3
    (model_dir / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match=r"float32 \[-1, 3, 16, 16\]"):
        load_model({"DLOPS_MODEL_DIR": str(model_dir)})
    manifest["input"]["shape"] = [-1, 3, 16, 16]  # consistent manifest, but the graph takes 1 channel
    (model_dir / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="graph input shape"):
        load_model({"DLOPS_MODEL_DIR": str(model_dir)})


def test_still_serving_after_all_of_it_and_log_has_no_traceback(photo: dict[str, Any]) -> None:
    check(upload(photo["http"], FILES), photo["model_dir"], FILES)
    assert photo["proc"].poll() is None
    log = photo["log"].read_text()
    assert "Traceback" not in log, log[-5000:]
    assert "status=5" not in log
    assert "POST /predict rejected (400): bomb.png: " in log
