"""Experiments behind the bottleneck analysis: server CPU per request of each variant (digits model)."""
from __future__ import annotations

import asyncio, json, os, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.serve_bench import payload, run_load, tree_cpu  # noqa: E402
from tests.helpers import free_port, stop_server, wait_ready  # noqa: E402


def start(kind: str, model_dir: Path, work: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    log = work / f"{kind}-{port}.log"
    full = {**os.environ, "BENTOML_HOME": str(work / "bentoml_home"), "DLOPS_MODEL_DIR": str(model_dir),
            "BENTOML_DO_NOT_TRACK": "true", **env}
    if kind == "fastapi":
        cmd = [sys.executable, "-m", "benchmarks.fastapi_ref", "--model-dir", str(model_dir), "--port", str(port)]
    else:
        cmd = [str(Path(sys.executable).parent / "bentoml"), "serve", kind, "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    wait_ready(proc, f"http://127.0.0.1:{port}", 120)
    return proc, f"http://127.0.0.1:{port}", log


def main() -> None:
    model_dir, work = Path(sys.argv[1]), Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    body = json.dumps(payload("digits")).encode()
    V = "benchmarks._experiments.service_variant:Predictor"
    variants = [
        ("fastapi ref", "fastapi", {}),
        ("dlops (serving.service)", "serving.service:Predictor", {}),
        ("variant: same config", V, {}),
        ("variant: access log off", V, {"DLOPS_X_ACCESS_LOG": "0"}),
        ("variant: access log + metrics off", V, {"DLOPS_X_ACCESS_LOG": "0", "DLOPS_X_METRICS": "0"}),
        ("variant: bare route, default config", V, {"DLOPS_X_BARE": "1"}),
        ("variant: bare route, access log + metrics off", V, {"DLOPS_X_BARE": "1", "DLOPS_X_ACCESS_LOG": "0", "DLOPS_X_METRICS": "0"}),
        ("dlops, all shed (MAX_INFLIGHT=0)", "serving.service:Predictor", {"DLOPS_MAX_INFLIGHT": "0"}),
        ("variant: all shed, access log + metrics off", V, {"DLOPS_MAX_INFLIGHT": "0", "DLOPS_X_ACCESS_LOG": "0", "DLOPS_X_METRICS": "0"}),
    ]
    F = {"PYTHONPATH": os.environ.get("FASTPKGS", "/tmp/bm/fastpkgs")}  # httptools + uvloop (pip --target)
    OFF = {"DLOPS_X_ACCESS_LOG": "0", "DLOPS_X_METRICS": "0", "DLOPS_X_TRACING_OFF": "1"}
    variants += [
        ("fastapi ref + httptools/uvloop", "fastapi", F),  # 9
        ("dlops + httptools/uvloop", "serving.service:Predictor", F),  # 10
        ("variant: tracing excluded for /predict", V, {"DLOPS_X_TRACING_OFF": "1"}),  # 11
        ("variant: access log + metrics + tracing off", V, OFF),  # 12
        ("variant: access log + metrics + tracing off + httptools/uvloop", V, {**OFF, **F}),  # 13
        ("variant: all shed, admission first, httptools/uvloop", V, {"DLOPS_MAX_INFLIGHT": "0", "DLOPS_X_ADMISSION_FIRST": "1", **F}),  # 14
        ("dlops, all shed, httptools/uvloop", "serving.service:Predictor", {"DLOPS_MAX_INFLIGHT": "0", **F}),  # 15
    ]
    only = sys.argv[3].split(",") if len(sys.argv) > 3 else None
    print("| variant | 1-client p50 ms | 16-client req/s | server CPU ms/req (16) | client CPU ms/req | codes |")
    print("|---|---|---|---|---|---|")
    for i, (label, kind, env) in enumerate(variants):
        if only and str(i) not in only:
            continue
        proc, url, log = start(kind, model_dir, work, env)
        try:
            run_load(url, body, 16, 1.0)
            one = run_load(url, body, 1, float(os.environ.get("S1", 3)), proc.pid)
            many = run_load(url, body, 16, float(os.environ.get("S16", 5)), proc.pid)
        finally:
            stop_server(proc)
        print(f"| {label} | {one['p50']:.2f} | {many['rps']:.0f} | {many['cpu_ms']:.3f} | {many['client_cpu_ms']:.3f} | {many['codes']} |", flush=True)


if __name__ == "__main__":
    main()
