"""Request recording's cost, one run: two dlops services of the digits demo model side by side, recording
off and on (``DLOPS_RECORD_DIR``, ``DLOPS_RECORD_SAMPLE=1.0``), measured in alternating rounds (1 client:
p50/req/s; 16 clients: req/s, p50, server CPU per request), median over the rounds and on/off ratios
paired per round; then the costs in-process, in microseconds per one-item request, with prometheus
in multiprocess mode as under BentoML: the drift series (``_count_predictions``), ``Recorder.sampled``
+ ``offer`` (the request path's share of recording) and the writer thread's serialise + append.

Same load generator and servers as ``benchmarks/serve_bench.py`` (asyncio + httpx on the same cores).

    python benchmarks/record_bench.py                      # 3 rounds, ~2 minutes on 2 cores
    python benchmarks/record_bench.py --rounds 5 --seconds16 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serve_bench import Server, build, fmt, payload, run_load  # noqa: E402

MODES = ("off", "on")


def measure(servers: dict[str, Server], body: bytes, args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """Per mode, one result per round: 1 client then ``args.clients`` clients; the order alternates."""
    for server in servers.values():
        run_load(server.url, body, args.clients, 1.0)  # warm-up
    out: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for r in range(args.rounds):
        for mode in (MODES if r % 2 == 0 else MODES[::-1]):
            server = servers[mode]
            one = run_load(server.url, body, 1, args.seconds1, server.proc.pid)
            many = run_load(server.url, body, args.clients, args.seconds16, server.proc.pid)
            out[mode].append({"one": one, "many": many})
            print(f"  round {r + 1} recording {mode}: 1 client p50 {one['p50']:.2f} ms; {args.clients} clients "
                  f"{many['rps']:.0f} req/s, CPU {many['cpu_ms']:.2f} ms/req, codes {many['codes']}", file=sys.stderr)
    return out


def median(rounds: list[dict[str, Any]], phase: str, key: str) -> float:
    return statistics.median(r[phase][key] for r in rounds)


def in_process(model_dir: Path, record_dir: Path, body: dict[str, Any], n: int) -> dict[str, float]:
    """Microseconds per one-item request of the drift series and of sampling + queueing a record."""
    multiproc = Path(tempfile.mkdtemp(prefix="prom-"))
    os.environ.update(PROMETHEUS_MULTIPROC_DIR=str(multiproc), DLOPS_MODEL_DIR=str(model_dir),
                      DLOPS_RECORD_DIR=str(record_dir), DLOPS_RECORD_SAMPLE="1.0")
    from serving import service

    result = service._predict(service.ITEMS.validate_python(body[service.FIELD]))
    rows = result["predictions"]
    t0 = time.perf_counter()
    for _ in range(n):
        service._count_predictions(rows)
    metrics_us = (time.perf_counter() - t0) / n * 1e6
    recorder = service.RECORDER
    t0 = time.perf_counter()
    for i in range(n):
        if recorder.sampled():
            recorder.offer(service.ROUTE, body[service.FIELD], rows, 300)
        if i % 500 == 499:
            time.sleep(0.005)  # let the writer drain (its time is not the request path's)
    offer_us = (time.perf_counter() - t0 - 0.005 * (n // 500)) / n * 1e6
    recorder.close()
    # the writer thread's share: serialising and appending (the server's CPU, not the request's latency)
    from serving.record import RecordConfig, Recorder

    writer = Recorder(RecordConfig(record_dir / "writer"), "bench", 1)
    batch = [(time.time(), service.ROUTE, body[service.FIELD], rows)] * 100
    t0 = time.perf_counter()
    for _ in range(max(1, n // 100)):
        writer._write(batch)
    write_us = (time.perf_counter() - t0) / (max(1, n // 100) * 100) * 1e6
    writer.close()
    return {"metrics_us": metrics_us, "offer_us": offer_us, "write_us": write_us}


def report(results: dict[str, list[dict[str, Any]]], micro: dict[str, float], written: int,
           args: argparse.Namespace) -> None:
    n = args.clients
    print(f"\n| recording | p50 ms (1 client) | req/s (1 client) | p50 ms ({n} clients) | req/s ({n}) | "
          f"p99 ms ({n}) | server CPU ms/req ({n}) |")
    print("|---|---|---|---|---|---|---|")
    for mode, label in (("off", "off"), ("on", "on, sample 1.0")):
        rounds = results[mode]
        print(f"| {label} | {fmt(median(rounds, 'one', 'p50'))} | {median(rounds, 'one', 'rps'):.0f} | "
              f"{fmt(median(rounds, 'many', 'p50'))} | {median(rounds, 'many', 'rps'):.0f} | "
              f"{fmt(median(rounds, 'many', 'p99'))} | {fmt(median(rounds, 'many', 'cpu_ms'))} |")
    off, on = results["off"], results["on"]
    # paired by round (the two ran back to back): robust to a shared machine's load changing between rounds
    for phase, key, what in (("one", "p50", "1-client p50"), ("many", "rps", f"{n}-client req/s")):
        ratios = sorted(b[phase][key] / a[phase][key] for a, b in zip(off, on))
        print(f"\n{what} on / off, paired per round: median x{statistics.median(ratios):.3f} "
              f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
    print(f"\n{written} lines written by the recording server")
    print(f"in-process, per one-item request: drift series {micro['metrics_us']:.1f} us, "
          f"Recorder.sampled + offer {micro['offer_us']:.1f} us on the request path; "
          f"{micro['write_us']:.1f} us on the writer thread (serialise + append)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds1", type=float, default=4.0, help="1-client phase, per server and round")
    parser.add_argument("--seconds16", type=float, default=6.0, help="16-client phase, per server and round")
    parser.add_argument("--micro-n", type=int, default=20000, help="in-process repetitions")
    args = parser.parse_args()

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="record-bench-") as tmp:
        work = Path(tmp)
        model_dir = build("digits", work / "digits")
        body_obj = payload("digits")
        body = json.dumps(body_obj).encode()
        record_dir = work / "recorded"
        envs = {"off": {}, "on": {"DLOPS_RECORD_DIR": str(record_dir), "DLOPS_RECORD_SAMPLE": "1.0"}}
        for mode in MODES:
            (work / mode).mkdir()
        servers = {mode: Server("dlops", model_dir, work / mode, envs[mode]) for mode in MODES}
        try:
            for server in servers.values():
                server.ready(body)
            results = measure(servers, body, args)
        finally:
            for server in servers.values():
                server.stop()
        written = sum(len(p.read_bytes().splitlines()) for p in record_dir.rglob("*.jsonl"))
        micro = in_process(model_dir, work / "micro", body_obj, args.micro_n)
    report(results, micro, written, args)
    print(f"\none digit per request; median of {args.rounds} alternating rounds of {args.seconds1:g} s at 1 client "
          f"and {args.seconds16:g} s at {args.clients} clients per server; load generator on the same "
          f"{os.cpu_count()} cores; whole run {time.perf_counter() - t_start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
