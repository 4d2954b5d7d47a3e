"""Raw ONNX Runtime in-process vs the served /predict endpoint, side by side, as a markdown table.

For each adaptive-batching ``max_latency_ms`` it starts ``bentoml serve`` on 127.0.0.1 (killed by
PID group at the end), then measures one-image /predict latency at 1 client and throughput, latency
and the share of 503s/errors at 16 concurrent clients. Bounded loops; stops by itself.

    python benchmarks/serve_bench.py                      # model from artifacts/deploy, else a demo model
    python benchmarks/serve_bench.py --latencies 10,100,250 --seconds 8
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import build_demo_model, free_port, start_server, stop_server, wait_ready  # noqa: E402
from serving.model import load_model  # noqa: E402


def digits_images(n: int) -> list[list[list[float]]]:
    from sklearn.datasets import load_digits

    return load_digits().images[:n].tolist()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def bench_raw(model_dir: Path, image: list[list[float]], n: int) -> dict[str, float]:
    model = load_model({"DLOPS_MODEL_DIR": str(model_dir)})
    x = np.asarray([image], np.float32).reshape(1, 1, 8, 8)
    for _ in range(20):
        model.predict_proba(x)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        model.predict_proba(x)
        times.append(time.perf_counter() - t0)
    return {"p50": pct(times, 50), "p95": pct(times, 95), "rps": n / sum(times), "fail": 0.0,
            "p50_16": float("nan"), "batch": 1.0}


def batches_seen(client: httpx.Client) -> tuple[float, float]:
    """(sum, count) of the model service's adaptive_batch_size histogram (requests per batch)."""
    text = client.get("/metrics").text
    total = [float(v) for v in re.findall(r'adaptive_batch_size_sum\{[^}]*method_name="infer"[^}]*\} (\S+)', text)]
    count = [float(v) for v in re.findall(r'adaptive_batch_size_count\{[^}]*method_name="infer"[^}]*\} (\S+)', text)]
    return sum(total), sum(count)


async def load(url: str, body: dict, clients: int, seconds: float) -> tuple[Counter, list[float], float]:
    codes: Counter = Counter()
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        async def worker() -> None:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    resp = await client.post("/predict", json=body)
                    codes[resp.status_code] += 1
                except httpx.HTTPError as exc:
                    codes[type(exc).__name__] += 1
                latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return codes, latencies, time.perf_counter() - start


def bench_served(model_dir: Path, max_latency_ms: int, image: list, args: argparse.Namespace,
                 work: Path) -> dict[str, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(model_dir, port, work / "bentoml_home", work / f"serve_{max_latency_ms}.log",
                        {"DLOPS_BATCH_MAX_LATENCY_MS": str(max_latency_ms)})
    try:
        wait_ready(proc, url, timeout=90)
        body = {"images": [image]}
        with httpx.Client(base_url=url, timeout=30) as client:
            for _ in range(50):  # the dispatcher trains its latency model on the first requests
                client.post("/predict", json=body)
            times = []
            for _ in range(args.requests):
                t0 = time.perf_counter()
                client.post("/predict", json=body).raise_for_status()
                times.append(time.perf_counter() - t0)
            before = batches_seen(client)
            codes, lat16, wall = asyncio.run(load(url, body, args.clients, args.seconds))
            after = batches_seen(client)
            alive = client.post("/predict", json=body).status_code == 200
    finally:
        stop_server(proc)
    total = sum(codes.values())
    batches = after[1] - before[1]
    return {"p50": pct(times, 50), "p95": pct(times, 95), "rps": codes[200] / wall,
            "fail": 100.0 * (total - codes[200]) / max(total, 1), "p50_16": pct(lat16, 50),
            "p95_16": pct(lat16, 95), "batch": (after[0] - before[0]) / batches if batches else float("nan"),
            "codes": dict(codes), "alive": alive}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--latencies", default="10,100,250", help="max_latency_ms values to serve with")
    parser.add_argument("--requests", type=int, default=300, help="sequential requests at 1 client")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of the concurrent phase")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        work = Path(tmp)
        model_dir = args.model_dir or ROOT / "artifacts" / "deploy"
        if not (model_dir / "manifest.json").exists():
            print(f"no model in {model_dir}: exporting a demo model", file=sys.stderr)
            model_dir = build_demo_model(work / "model")
        image = digits_images(1)[0]
        rows = [("raw ONNX Runtime, in-process", bench_raw(model_dir, image, args.requests * 3))]
        for ms in [int(v) for v in args.latencies.split(",")]:
            result = bench_served(model_dir, ms, image, args, work)
            print(f"max_latency_ms={ms}: status codes {result['codes']}, alive after: {result['alive']}",
                  file=sys.stderr)
            rows.append((f"/predict, max_latency_ms={ms}", result))

    n = args.clients
    print(f"\n| path | p50 ms (1 client) | p95 ms (1 client) | req/s ({n} clients) | "
          f"p50 / p95 ms ({n} clients) | 503+errors ({n} clients) | requests per batch |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        loaded = f"{r['p50_16']:.1f} / {r['p95_16']:.1f}" if "p95_16" in r else "-"
        rps = f"{r['rps']:.0f}" + (" (1 thread)" if "p95_16" not in r else "")
        print(f"| {name} | {r['p50']:.2f} | {r['p95']:.2f} | {rps} | {loaded} | {r['fail']:.1f} % | "
              f"{r['batch']:.1f} |")
    print(f"\none 8x8 image per request; {args.requests} sequential requests at 1 client; "
          f"{args.seconds:g} s at {n} clients (httpx, asyncio, same machine)")


if __name__ == "__main__":
    main()
