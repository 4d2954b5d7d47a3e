"""Stages that don't train must not pay for importing lightning (~7-15 s per process here)."""

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


ALLOWED = {"collect": set(), "split": set(), "design": {"torch"}, "configure": {"torch"},
           "train": {"torch", "lightning", "pytorch_lightning", "mlflow"}, "evaluate": {"torch", "mlflow"}}


def test_non_training_steps_skip_lightning(tmp_path, subprocess_env, mlflow_uri):
    """Run the six steps for real, each in a fresh process, and list the heavy modules each imported."""
    d = tmp_path
    argv = {
        "collect": ["--out-dir", d / "collect"],
        "split": ["--collect-dir", d / "collect", "--out-dir", d / "split"],
        "design": ["--split-dir", d / "split", "--out-dir", d / "design"],
        "configure": ["--split-dir", d / "split", "--design-dir", d / "design", "--out-dir", d / "configure"],
        "train": ["--split-dir", d / "split", "--design-dir", d / "design", "--configure-dir", d / "configure",
                  "--out-dir", d / "train"],
        "evaluate": ["--split-dir", d / "split", "--train-dir", d / "train", "--out-dir", d / "evaluate"],
    }
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())  # a params file lists every key
    raw["train"]["epochs"], raw["evaluate"]["baselines"] = 1, ["logreg"]
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
