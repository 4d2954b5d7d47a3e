"""serve_bench's overload phase against a service variant (env as in service_variant.py)."""
from __future__ import annotations

import argparse, json, os, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks._experiments.exp import start  # noqa: E402
from benchmarks.serve_bench import overload, payload  # noqa: E402
from tests.helpers import stop_server  # noqa: E402

model_dir, work, target, seconds = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], float(sys.argv[4])
env = dict(kv.split("=", 1) for kv in sys.argv[5:])
work.mkdir(parents=True, exist_ok=True)
proc, url, log = start(target, model_dir, work, env)


class S:  # what overload() needs of serve_bench.Server
    pass


s = S()
s.url, s.proc, s.log_lines = url, proc, lambda: len(log.read_bytes().splitlines())
args = argparse.Namespace(clients=16, seconds16=5.0, overload_factor=2.0, overload_seconds=seconds, connections=512)
try:
    o = overload(s, json.dumps(payload("digits")).encode(), args)
finally:
    stop_server(proc)
print(target, env, {k: (round(v, 1) if isinstance(v, float) else v) for k, v in o.items()})
