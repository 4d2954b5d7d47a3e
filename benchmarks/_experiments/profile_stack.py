"""cProfile one /predict through the dlops ASGI app in-process (no socket, no uvicorn/h11): where the
server's CPU per request goes, grouped by package.

    DLOPS_MODEL_DIR=... BENTOML_HOME=... python benchmarks/_experiments/profile_stack.py [N] [service]
"""
from __future__ import annotations

import asyncio, cProfile, json, os, pstats, sys, time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


async def main(n: int, target: str) -> None:
    from _bentoml_impl.loader import load
    from bentoml._internal.context import server_context
    from bentoml._internal.log import configure_server_logging
    from benchmarks.serve_bench import payload

    configure_server_logging()
    svc = load(target, standalone_load=True)
    server_context.service_type, server_context.service_name = "entry_service", svc.name
    app = svc.to_asgi(is_main=True)
    lifespan_q: asyncio.Queue = asyncio.Queue()
    started = asyncio.Event()

    async def lreceive():
        return await lifespan_q.get()

    async def lsend(msg):
        if msg["type"] == "lifespan.startup.complete":
            started.set()

    await lifespan_q.put({"type": "lifespan.startup"})
    asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, lreceive, lsend))
    await asyncio.wait_for(started.wait(), 60)
    body = json.dumps(payload("digits")).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/predict", "raw_path": b"/predict", "root_path": "", "query_string": b"",
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 3000)}

    async def one() -> int:
        sent = False
        status = 0

        async def receive():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)

        async def send(msg):
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]

        await app(dict(scope), receive, send)
        return status

    for _ in range(300):
        assert await one() == 200
    t0 = time.perf_counter()
    for _ in range(n):
        await one()
    plain = (time.perf_counter() - t0) / n
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        await one()
    prof.disable()
    print(f"{target}: {plain * 1e3:.3f} ms/request through the ASGI app without profiling (no HTTP parsing)")
    stats = pstats.Stats(prof)
    groups: dict[str, float] = defaultdict(float)
    for (file, line, func), (cc, nc, tt, ct, callers) in stats.stats.items():
        f = file.replace(str(ROOT), "<repo>")
        if "site-packages/" in f:
            key = f.split("site-packages/")[1].split("/")[0]
        elif f.startswith("<repo>"):
            key = "/".join(f.split("/")[1:3])
        elif "logging" in f:
            key = "stdlib logging"
        elif f.startswith("~"):
            key = "builtins: " + func.split(" ")[-1][:40]
        else:
            key = "stdlib " + Path(f).stem
        groups[key] += tt
    total = sum(groups.values())
    print(f"profiled total {total / n * 1e3:.3f} ms/request (cProfile inflates); own time by package:")
    for key, tt in sorted(groups.items(), key=lambda kv: -kv[1])[:22]:
        print(f"  {tt / n * 1e3:7.3f} ms  {100 * tt / total:5.1f} %  {key}")
    stats.sort_stats("cumulative").print_stats(35)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000,
                     sys.argv[2] if len(sys.argv) > 2 else "serving.service:Predictor"))
