"""Overload of the dlops service: the server pinned to CPU 0 (one worker), the load generator to CPU 1,
so the generator does not steal the server's core.

    python benchmarks/overload_bench.py [--seconds 60] [--factor 2] [--max-inflight 32] [--generator poisson]

Measures capacity C with 16 closed-loop keep-alive clients, then offers ``factor`` x C for ``seconds``
and prints accepted/shed counts and latency per status (from each request's arrival), the server's log
lines during the overload and the 1-client p50 right after, 5 x 1 s.

``--generator poisson`` (default, ``benchmarks/openloop.py``): open-loop Poisson arrivals at the
offered rate, the load of many independent clients, over keep-alive connections (256 opened a second
before the overload; more are opened when all are busy). ``--generator hey`` (Debian's ``hey``): 400
rate-limited workers whose ticks fall in phase, i.e. bursts of up to 400 requests at once ~9 times a
second -- a harsher shape, kept for comparison.
"""

from __future__ import annotations

import argparse
import csv
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

from tests.helpers import build_demo_model, free_port, stop_server, wait_ready  # noqa: E402

PIN_GENERATOR = ["taskset", "-c", "1"]


def generate(kind: str, url: str, body: Path, rate: float, seconds: int) -> tuple[dict[str, list[float]], float, str]:
    """Offer ``rate`` req/s for ``seconds`` from CPU 1: (ms per status, elapsed s, generator note)."""
    if kind == "hey":
        workers = 400
        out = subprocess.run([*PIN_GENERATOR, "hey", "-m", "POST", "-T", "application/json", "-D", str(body),
                              "-c", str(workers), "-q", f"{rate / workers:.2f}", "-z", f"{seconds}s", "-t", "10",
                              "-o", "csv", url], capture_output=True, text=True, check=True).stdout
        by: dict[str, list[float]] = {}
        rows = list(csv.DictReader(io.StringIO(out)))
        for row in rows:
            by.setdefault(row["status-code"], []).append(float(row["response-time"]) * 1e3)
        return by, seconds, "hey, 400 workers (bursts)"
    code = (f"import json, sys; from benchmarks.openloop import run; r = run({url!r}, open({str(body)!r}, 'rb').read(), "
            f"{rate}, {seconds}, warm_conns=256, settle_s=1.0); json.dump({{'lat': r.latencies, 'elapsed': r.elapsed_s, 'lag': sorted(r.lag_ms)"
            f"[int(0.99 * len(r.lag_ms))] if r.lag_ms else 0, 'limited': r.client_limited, 'errors': r.errors}}, sys.stdout)")
    res = json.loads(subprocess.run([*PIN_GENERATOR, sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                                    text=True, check=True).stdout)
    return res["lat"], res["elapsed"], (f"Poisson open loop (generator lag p99 {res['lag']:.1f} ms, client-limited "
                                        f"{res['limited']}, errors {res['errors']})")


def closed_loop(url: str, body: Path, clients: int, seconds: float) -> tuple[float, float]:
    """(req/s, p50 ms) of ``clients`` closed-loop clients on CPU 1."""
    code = (f"import json, sys; from benchmarks.openloop import run_closed, quantile; r = run_closed({url!r}, "
            f"open({str(body)!r}, 'rb').read(), {clients}, {seconds}); ts = r.latencies.get('200', []); "
            f"json.dump([len(ts) / r.elapsed_s, quantile(ts, 0.5)], sys.stdout)")
    out = subprocess.run([*PIN_GENERATOR, sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    rps, p50 = json.loads(out)
    return rps, p50


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--factor", type=float, default=2.0)
    ap.add_argument("--max-inflight", type=int, default=32)
    ap.add_argument("--generator", choices=("poisson", "hey"), default="poisson")
    args = ap.parse_args()
    if shutil.which("taskset") is None or (args.generator == "hey" and shutil.which("hey") is None):
        sys.exit("needs taskset (util-linux), and hey for --generator hey (apt-get install hey)")
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
            closed_loop(f"{url}/predict", body, 16, 2)  # warm-up
            capacity, _ = closed_loop(f"{url}/predict", body, 16, 8)
            before_p50 = [closed_loop(f"{url}/predict", body, 1, 1)[1] for _ in range(3)]
            lines_before = len(log.read_text().splitlines())
            by, elapsed, note = generate(args.generator, f"{url}/predict", body, args.factor * capacity, args.seconds)
            lines = len(log.read_text().splitlines()) - lines_before
            after = [closed_loop(f"{url}/predict", body, 1, 1)[1] for _ in range(5)]
        finally:
            stop_server(proc)
        total = sum(len(v) for v in by.values())
        print(f"\noverload: server pinned to CPU 0 (1 worker), generator on CPU 1 ({note}), "
              f"DLOPS_MAX_INFLIGHT={args.max_inflight}\n")
        print("| capacity C (16 clients) | offered | status | count (per s) | p50 ms | p99 ms | max ms |")
        print("|---|---|---|---|---|---|---|")
        for code, ts in sorted(by.items()):
            ts.sort()
            q = lambda p: ts[min(len(ts) - 1, int(p * len(ts)))]  # noqa: E731
            print(f"| {capacity:.0f} req/s | {total / elapsed:.0f} req/s ({total / elapsed / capacity:.1f}x) x "
                  f"{args.seconds} s | {code} | {len(ts)} ({len(ts) / elapsed:.0f}) | {q(0.5):.1f} | {q(0.99):.1f} | "
                  f"{ts[-1]:.1f} |")
        print(f"\nserver log lines during the overload: {lines}; 1-client p50 before: "
              f"{', '.join(f'{a:.2f}' for a in before_p50)} ms; right after, 5 x 1 s: "
              f"{', '.join(f'{a:.2f}' for a in after)} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
