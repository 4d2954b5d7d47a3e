"""Does opportunistic batching (``DLOPS_BATCH_MAX_ROWS``) pay? The dlops service with and without it,
side by side in one run, for a small model (the 8x8 digits demo) and a larger image model
(``resnet_small``, 3x96x96 PNG uploads as JSON base64), the server pinned to CPU 0 and the load
generator (``benchmarks/openloop.py``, closed loop, keep-alive) to CPU 1:
1-client p50/p99 and 16-client req/s and p50/p99.

    python benchmarks/batching_bench.py [--seconds 8] [--max-rows 32]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import build_demo_model, build_photo_model, free_port, stop_server, wait_ready  # noqa: E402


def closed(url: str, body: Path, clients: int, seconds: float) -> tuple[float, float, float]:
    code = (f"import json, sys; from benchmarks.openloop import run_closed, quantile; r = run_closed({url!r}, "
            f"open({str(body)!r}, 'rb').read(), {clients}, {seconds}); ts = r.latencies.get('200', []); "
            f"bad = sum(len(v) for k, v in r.latencies.items() if k != '200'); "
            f"json.dump([len(ts) / r.elapsed_s, quantile(ts, 0.5), quantile(ts, 0.99), bad], sys.stdout)")
    out = subprocess.run(["taskset", "-c", "1", sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    rps, p50, p99, bad = json.loads(out)
    if bad:
        raise RuntimeError(f"{bad} answers were not 200")
    return rps, p50, p99


def photo_body(path: Path, size: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    path.write_text(json.dumps({"images": [{"name": "x.png", "data": base64.b64encode(buf.getvalue()).decode()}]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--max-rows", type=int, default=32)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dlops-batching-"))
    rows = []
    try:
        from sklearn.datasets import load_digits

        models = {"digits (cnn, 8x8)": build_demo_model(work / "digits"),
                  "photos (resnet_small, 3x96x96 PNG)": build_photo_model(
                      work / "photo", channels=3, size=(96, 96), arch="resnet_small",
                      kwargs={"channels": [32, 64, 128], "blocks": 1})}
        bodies = {"digits (cnn, 8x8)": work / "digits.json", "photos (resnet_small, 3x96x96 PNG)": work / "photo.json"}
        bodies["digits (cnn, 8x8)"].write_text(json.dumps({"images": [load_digits().images[0].tolist()]}))
        photo_body(bodies["photos (resnet_small, 3x96x96 PNG)"], 96)
        for name, model in models.items():
            for batch in (0, args.max_rows):
                port = free_port()
                env = {**os.environ, "DLOPS_MODEL_DIR": str(model), "BENTOML_HOME": str(work / "home"),
                       "BENTOML_DO_NOT_TRACK": "true", "DLOPS_BATCH_MAX_ROWS": str(batch)}
                cmd = ["taskset", "-c", "0", str(Path(sys.executable).parent / "bentoml"), "serve",
                       "serving.service:Predictor", "--host", "127.0.0.1", "--port", str(port)]
                with (work / f"serve-{port}.log").open("wb") as fh:
                    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                            start_new_session=True)
                url = f"http://127.0.0.1:{port}/predict"
                try:
                    wait_ready(proc, url.rsplit("/", 1)[0], timeout=120)
                    closed(url, bodies[name], 16, 2)  # warm-up
                    one = closed(url, bodies[name], 1, args.seconds / 2)
                    many = closed(url, bodies[name], 16, args.seconds)
                finally:
                    stop_server(proc)
                rows.append((name, batch, one, many))
                print(rows[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n| model | batching | 1 client p50 / p99 ms | 16 clients req/s | 16 clients p50 / p99 ms |")
    print("|---|---|---|---|---|")
    base = {}
    for name, batch, one, many in rows:
        base.setdefault(name, many[0])
        label = f"DLOPS_BATCH_MAX_ROWS={batch}" if batch else "off (default)"
        print(f"| {name} | {label} | {one[1]:.2f} / {one[2]:.2f} | {many[0]:.0f} ({many[0] / base[name]:.2f}x) | "
              f"{many[1]:.1f} / {many[2]:.1f} |")


if __name__ == "__main__":
    main()
