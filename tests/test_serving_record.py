"""Request recording (``DLOPS_RECORD_DIR``), the drift series on ``/metrics`` and ``GET /card``, against
real ``bentoml serve`` processes (three, started at once: a digits model with a card recording
everything, the same model without a card sampling nothing, an image-file model under a small cap),
plus the recorder alone: a full queue drops and counts, rotation names, bad settings, ``kill -9``."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from serving.record import RecordConfig, Recorder, from_env
from tests.helpers import build_demo_model, build_photo_model, free_port, start_server, stop_server, wait_ready

ROOT = Path(__file__).resolve().parents[1]
CARD = "# dlops-digits-demo v7\n\nA tiny untrained CNN for **tests**: do not use it.\n"
NAME = re.compile(r"requests-\d{8}-\d{6}-\d+\.jsonl")
CAP_MB = 0.1


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("models")
    digits = build_demo_model(base / "digits")
    (digits / "card.md").write_text(CARD)
    no_card = base / "no-card"
    shutil.copytree(digits, no_card, ignore=shutil.ignore_patterns("card.md"))
    return {"digits": digits, "no_card": no_card, "photos": build_photo_model(base / "photos")}


@pytest.fixture(scope="module")
def servers(model_dirs: dict[str, Path],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    base = tmp_path_factory.mktemp("record")
    specs = {"all": (model_dirs["digits"], {}), "none": (model_dirs["no_card"], {"DLOPS_RECORD_SAMPLE": "0"}),
             "capped": (model_dirs["photos"], {"DLOPS_RECORD_MAX_MB": str(CAP_MB)})}
    running: dict[str, dict[str, Any]] = {}
    try:
        for name, (model_dir, env) in specs.items():  # own BENTOML_HOME each: own /metrics
            port, record = free_port(), base / f"rec-{name}"
            proc = start_server(model_dir, port, base / f"home-{name}", base / f"{name}.log",
                                {"DLOPS_RECORD_DIR": str(record), **env})
            running[name] = {"url": f"http://127.0.0.1:{port}", "proc": proc, "record": record,
                             "log": base / f"{name}.log"}
        for info in running.values():
            try:
                wait_ready(info["proc"], info["url"], timeout=120)
            except Exception:
                print(info["log"].read_text()[-3000:])
                raise
        yield running
    finally:
        for info in running.values():
            stop_server(info["proc"])


def metric(url: str, name: str) -> float:
    """Sum of a series' samples on /metrics (all its labels)."""
    text = httpx.get(f"{url}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name)] in " {")


def wait_recorded(url: str, n: float, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while metric(url, "dlops_recorded_requests_total") < n:
        assert time.monotonic() < deadline, f"fewer than {n} requests recorded after {timeout} s"
        time.sleep(0.05)


def lines(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted(folder.glob("*.jsonl")) for line in path.read_text().splitlines()]


def test_recorded_lines_are_the_requests_and_responses(servers: dict[str, dict[str, Any]]) -> None:
    info = servers["all"]
    rng = np.random.default_rng(0)
    sent, answers = [], []
    t0 = time.time()
    with httpx.Client(base_url=info["url"], timeout=30) as http:
        for i in range(24):
            images = rng.integers(0, 17, size=(1 + i % 3, 8, 8)).tolist()
            if i % 2:
                images[0][0][0] = 0.5  # floats stay floats, ints stay ints
            resp = http.post("/predict", json={"images": images})
            assert resp.status_code == 200, resp.text
            sent.append(images)
            answers.append(resp.json()["predictions"])
            if i % 4 == 0:  # bad requests in between: never recorded
                assert http.post("/predict", json={"images": [[[99] * 8] * 8]}).status_code == 400
                assert http.post("/predict", content=b"{", headers={"content-type": "application/json"}
                                 ).status_code == 400
                assert http.post("/predict", content=b"x", headers={"content-type": "text/plain"}).status_code == 415
    wait_recorded(info["url"], len(sent))
    folder = info["record"] / "dlops-digits-demo-v7"
    files = sorted(folder.iterdir())
    assert files and all(NAME.fullmatch(p.name) for p in files), files
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    records = lines(folder)
    assert len(records) == len(sent)
    for record, images, predictions in zip(records, sent, answers):
        assert set(record) == {"ts", "route", "items", "outputs"}
        assert record["route"] == "/predict" and t0 <= record["ts"] <= time.time()
        assert record["items"] == images and record["outputs"] == predictions
    assert metric(info["url"], "dlops_record_dropped_total") == 0


def test_metrics_count_labels_and_confidence(servers: dict[str, dict[str, Any]]) -> None:
    url = servers["all"]["url"]
    before = {name: metric(url, name) for name in ("dlops_predictions_total", "dlops_prediction_confidence_count",
                                                   "dlops_recorded_requests_total")}
    resp = httpx.post(f"{url}/predict", json={"images": [[[0] * 8] * 8] * 5})
    assert resp.status_code == 200
    label = resp.json()["predictions"][0]["label"]
    wait_recorded(url, before["dlops_recorded_requests_total"] + 1)
    assert metric(url, "dlops_predictions_total") == before["dlops_predictions_total"] + 5
    assert metric(url, "dlops_prediction_confidence_count") == before["dlops_prediction_confidence_count"] + 5
    text = httpx.get(f"{url}/metrics").text
    assert re.search(rf'^dlops_predictions_total\{{label="{label}"\}} \d', text, re.M)
    assert 'dlops_prediction_confidence_bucket{le="0.5"}' in text
    assert 'dlops_record_dropped_total{reason="queue_full"} 0.0' in text


def test_card_is_served_and_documented(servers: dict[str, dict[str, Any]]) -> None:
    resp = httpx.get(f"{servers['all']['url']}/card")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/markdown")
    assert resp.text == CARD
    missing = httpx.get(f"{servers['none']['url']}/card")
    assert missing.status_code == 404 and list(missing.json()) == ["error"] and "card" in missing.json()["error"]
    spec = httpx.get(f"{servers['all']['url']}/docs.json").json()["paths"]["/card"]["get"]["responses"]
    assert "text/markdown" in spec["200"]["content"] and "application/json" in spec["404"]["content"]


def test_sample_zero_records_nothing(servers: dict[str, dict[str, Any]]) -> None:
    info = servers["none"]
    for _ in range(10):
        assert httpx.post(f"{info['url']}/predict", json={"images": [[[1] * 8] * 8]}).status_code == 200
    time.sleep(0.3)
    assert metric(info["url"], "dlops_recorded_requests_total") == 0
    assert metric(info["url"], "dlops_predictions_total") == 10  # the drift series do not depend on recording
    assert not list(info["record"].rglob("*.jsonl"))


def noise_png(seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")  # noise does not compress: ~3 KB each
    return out.getvalue()


def test_uploads_recorded_as_json_items_under_the_cap(servers: dict[str, dict[str, Any]]) -> None:
    info = servers["capped"]
    with httpx.Client(base_url=info["url"], timeout=30) as http:
        for i in range(40):
            files = [("file", (f"a{i}.png", noise_png(2 * i))), ("file", (f"b{i}.png", noise_png(2 * i + 1)))]
            resp = http.post("/predict", files=files)
            assert resp.status_code == 200, resp.text
        as_json = [{"name": "c.png", "data": base64.b64encode(noise_png(99)).decode()}]
        last = http.post("/predict", json={"images": as_json})
        assert last.status_code == 200, last.text
    wait_recorded(info["url"], 41)
    folder = info["record"] / "dlops-photos-demo-v3"
    files = list(folder.glob("*.jsonl"))
    total = sum(p.stat().st_size for p in files)
    assert 1 < len(files) and total <= CAP_MB * 1024 * 1024, (len(files), total)  # rotated, oldest deleted
    records = lines(folder)
    assert 3 <= len(records) < 41
    assert records[-1]["items"] == as_json and records[-1]["outputs"] == last.json()["predictions"]
    upload = records[-2]
    assert upload["items"] == [{"name": "a39.png", "data": base64.b64encode(noise_png(78)).decode()},
                               {"name": "b39.png", "data": base64.b64encode(noise_png(79)).decode()}]
    assert [p["name"] for p in upload["outputs"]] == ["a39.png", "b39.png"]


# ---- the recorder alone ---------------------------------------------------------------------------


def test_settings_from_the_environment() -> None:
    assert from_env({}) is None
    config = from_env({"DLOPS_RECORD_DIR": "/tmp/x"})
    assert (config.sample, config.max_bytes, config.rotate_bytes, config.rotate_s) == (
        1.0, 1024 * 2**20, 64 * 2**20, 3600.0)
    for name, value in (("DLOPS_RECORD_SAMPLE", "1.5"), ("DLOPS_RECORD_SAMPLE", "half"),
                        ("DLOPS_RECORD_MAX_MB", "0"), ("DLOPS_RECORD_ROTATE_S", "-1")):
        with pytest.raises(ValueError, match=name):
            from_env({"DLOPS_RECORD_DIR": "/tmp/x", name: value})


def test_bad_setting_stops_the_service_with_one_line(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    env = {**os.environ, "DLOPS_MODEL_DIR": str(model_dirs["no_card"]), "DLOPS_RECORD_DIR": str(tmp_path / "rec"),
           "DLOPS_RECORD_SAMPLE": "2"}
    out = subprocess.run([sys.executable, "-c", "import serving.service"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        "error: cannot record requests: DLOPS_RECORD_SAMPLE='2': expected a number in [0, 1]")


def test_full_queue_drops_and_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dropped: list[tuple[str, int]] = []
    release = threading.Event()
    write = Recorder._write

    def slow_write(self: Recorder, batch: list[Any]) -> None:
        release.wait(10)
        write(self, batch)

    monkeypatch.setattr(Recorder, "_write", slow_write)
    rec = Recorder(RecordConfig(tmp_path, queue_items=2), "m", 1, on_dropped=lambda r, n: dropped.append((r, n)))
    assert rec.offer("/predict", [1], [{"label": "a"}], 10)  # taken by the writer, which then waits
    time.sleep(0.5)
    assert rec.offer("/predict", [2], [], 10) and rec.offer("/predict", [3], [], 10)
    assert not rec.offer("/predict", [4], [], 10)
    assert dropped == [("queue_full", 1)]
    release.set()
    rec.close()
    assert [r["items"] for r in lines(tmp_path / "m-v1")] == [[1], [2], [3]]


def test_rotation_by_time_and_size(tmp_path: Path) -> None:
    written: list[int] = []
    rec = Recorder(RecordConfig(tmp_path, rotate_s=1e-6), "my model/x", None, on_written=written.append)
    for i in range(3):
        rec.offer("/predict", [i], [], 1)
        time.sleep(0.2)  # one batch each (the writer gathers for 0.1 s)
    too_big = Recorder(RecordConfig(tmp_path / "big", max_bytes=400), "m", 2,
                       on_dropped=lambda reason, n: written.append(-n))
    too_big.offer("/predict", ["x" * 200], [], 200)  # a line over the file size (max / 4)
    rec.close()
    too_big.close()
    files = sorted((tmp_path / "my_model_x-vNone").iterdir())
    assert len(files) == 3 and all(NAME.fullmatch(p.name) for p in files)
    assert [json.loads(p.read_text())["items"] for p in files] == [[0], [1], [2]]
    assert sum(written) == 3 - 1


def test_kill_9_leaves_valid_jsonl(tmp_path: Path) -> None:
    script = ("import sys, time\nfrom pathlib import Path\nfrom serving.record import RecordConfig, Recorder\n"
              "rec = Recorder(RecordConfig(Path(sys.argv[1]), rotate_bytes=50_000), 'm', 1)\n"
              "i = 0\nwhile True:\n    rec.offer('/predict', [[i] * 500], [{'label': str(i)}], 1)\n"
              "    i += 1\n    if i % 100 == 0:\n        time.sleep(0.001)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT)
    time.sleep(1.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    records = lines(tmp_path / "m-v1")  # every line parses
    assert len(records) > 100
    seen = [int(r["outputs"][0]["label"]) for r in records]  # in order (a full queue may drop some)
    assert seen == sorted(set(seen))
