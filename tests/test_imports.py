"""Stages that don't train must not pay for importing lightning (~7-15 s per process here), and
evaluate/deploy not for torch or (in their own process) MLflow."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

PROBE = """
import sys, runpy
sys.argv = {argv!r}
try:
    runpy.run_module({module!r}, run_name="__main__")
except SystemExit as exc:
    assert not exc.code, exc.code
heavy = sorted(m for m in ("lightning", "pytorch_lightning", "mlflow", "torch") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


# evaluate and deploy: no torch (train wrote the outputs and the graph) and MLflow only in their warm
# worker processes (pipelines/worker.py), never in the stage's own
ALLOWED = {"collect": set(), "split": set(), "design": {"torch"}, "configure": {"torch"},
           "train": {"torch", "lightning", "pytorch_lightning", "mlflow"}, "evaluate": set(), "deploy": set()}


def test_non_training_steps_skip_lightning(tmp_path, subprocess_env, mlflow_uri):
    """Run the seven steps for real, each in a fresh process, and list the heavy modules each imported."""
    d = tmp_path
    argv = {
        "collect": ["--out-dir", d / "collect"],
        "split": ["--collect-dir", d / "collect", "--out-dir", d / "split"],
        "design": ["--split-dir", d / "split", "--out-dir", d / "design"],
        "configure": ["--split-dir", d / "split", "--design-dir", d / "design", "--out-dir", d / "configure"],
        "train": ["--split-dir", d / "split", "--design-dir", d / "design", "--configure-dir", d / "configure",
                  "--out-dir", d / "train"],
        "evaluate": ["--split-dir", d / "split", "--train-dir", d / "train", "--out-dir", d / "evaluate"],
        "deploy": ["--split-dir", d / "split", "--train-dir", d / "train", "--evaluate-dir", d / "evaluate",
                   "--out-dir", d / "deploy"],
    }
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())  # a params file lists every key
    raw["train"]["epochs"], raw["evaluate"]["baselines"] = 1, ["logreg"]
    raw["deploy"].update(build_bento=False, model_name="dlops-imports")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    subprocess_env["MLFLOW_TRACKING_URI"] = mlflow_uri
    imported = {}
    for step, args in argv.items():
        code = PROBE.format(argv=["x", "--params", str(params), *map(str, args)], module=f"pipelines.{step}")
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=subprocess_env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        imported[step] = set(out.stdout.split("HEAVY=")[1].strip().split(",")) - {""}
    assert all(imported[s] <= ALLOWED[s] for s in argv), imported
    assert "lightning" in imported["train"]  # the probe sees imports at all
    manifest = json.loads((d / "deploy" / "manifest.json").read_text())
    assert manifest["version"] == "1" and manifest["alias"] in ("champion", "challenger")  # by the worker
