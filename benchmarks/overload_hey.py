"""Overload of the dlops service with `hey` (Debian's `hey` package) as the load generator, the server
pinned to CPU 0 and hey to CPU 1, so the generator does not steal the server's core (serve_bench.py's
Python generator shares both cores with it and becomes the bottleneck near 2x capacity).

    python benchmarks/overload_hey.py [--seconds 60] [--factor 2] [--max-inflight 64]

Measures capacity C with 16 workers, then offers ~factor x C (hey: 400 workers, each rate-limited;
its arrivals come in bursts) and prints accepted/shed counts, latency per status from hey's CSV,
the server's log lines during the overload and the 1-client p50 right after.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import build_demo_model, free_port, stop_server, wait_ready  # noqa: E402


def hey(url: str, body: Path, *args: str) -> str:
    cmd = ["taskset", "-c", "1", "hey", "-m", "POST", "-T", "application/json", "-D", str(body), *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--factor", type=float, default=2.0)
    ap.add_argument("--max-inflight", type=int, default=64)
    args = ap.parse_args()
    if shutil.which("hey") is None or shutil.which("taskset") is None:
        sys.exit("needs hey (apt-get install hey) and taskset")
    work = Path(tempfile.mkdtemp(prefix="dlops-overload-"))
    try:
        model = build_demo_model(work / "model")
        body = work / "body.json"
        from sklearn.datasets import load_digits

        body.write_text(json.dumps({"images": [load_digits().images[0].tolist()]}))
        port = free_port()
        env = {**os.environ, "DLOPS_MODEL_DIR": str(model), "BENTOML_HOME": str(work / "home"),
               "BENTOML_DO_NOT_TRACK": "true", "DLOPS_MAX_INFLIGHT": str(args.max_inflight)}
        log = work / "serve.log"
        cmd = ["taskset", "-c", "0", str(Path(sys.executable).parent / "bentoml"), "serve", "serving.service:Predictor",
               "--host", "127.0.0.1", "--port", str(port)]
        with log.open("wb") as fh:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(proc, url, timeout=90)
            capacity = float(re.search(r"Requests/sec:\s+([0-9.]+)", hey(f"{url}/predict", body, "-c", "16", "-z", "8s"))[1])
            workers = 400
            before = len(log.read_text().splitlines())
            started = time.monotonic()
            out = hey(f"{url}/predict", body, "-c", str(workers), "-q", f"{args.factor * capacity / workers:.2f}",
                      "-z", f"{args.seconds}s", "-t", "10", "-o", "csv")
            elapsed = time.monotonic() - started
            lines = len(log.read_text().splitlines()) - before
            after = [re.search(r"50% in ([0-9.]+) secs", hey(f"{url}/predict", body, "-c", "1", "-z", "1s"))[1]
                     for _ in range(5)]
        finally:
            stop_server(proc)
        by: dict[str, list[float]] = {}
        for row in csv.DictReader(io.StringIO(out)):
            by.setdefault(row["status-code"], []).append(float(row["response-time"]) * 1e3)
        total = sum(len(v) for v in by.values())
        print(f"\noverload with hey: server pinned to CPU 0 (1 worker), hey to CPU 1, DLOPS_MAX_INFLIGHT="
              f"{args.max_inflight}\n")
        print("| capacity C (16 workers) | offered | status | count (per s) | p50 ms | p99 ms | max ms |")
        print("|---|---|---|---|---|---|---|")
        for code, ts in sorted(by.items()):
            ts.sort()
            q = lambda p: ts[min(len(ts) - 1, int(p * len(ts)))]  # noqa: E731
            print(f"| {capacity:.0f} req/s | {total / elapsed:.0f} req/s ({total / elapsed / capacity:.1f}x) x "
                  f"{args.seconds} s | {code} | {len(ts)} ({len(ts) / elapsed:.0f}) | {q(0.5):.1f} | {q(0.99):.1f} | "
                  f"{ts[-1]:.1f} |")
        print(f"\nserver log lines during the overload: {lines}; 1-client p50 right after, 5 x 1 s: "
              f"{', '.join(f'{float(a) * 1e3:.2f}' for a in after)} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
