"""Schemathesis (every check, fixed seed) against a real ``bentoml serve serving.service:Predictor`` of each
modality's demo model: whatever it generates from /docs.json, the service answers as its OpenAPI spec
says, never a 5xx, and takes every request its schema promises. Runs the venv's ``schemathesis`` CLI
(pinned in requirements.lock)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import build_demo_model, build_text_model, serving

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 100
SEED = 1
CLI = Path(sys.executable).parent / "schemathesis"


def _tabular(out: Path) -> Path:
    from tests.test_serving_tabular import build_tabular_model

    return build_tabular_model(out, "classification")


def _regression(out: Path) -> Path:
    from tests.test_serving_tabular import build_tabular_model

    return build_tabular_model(out, "regression")


MODELS = {
    "image": build_demo_model,
    "text": build_text_model,
    "tabular-classification": _tabular,
    "tabular-regression": _regression,
}


@pytest.mark.parametrize("build", list(MODELS.values()), ids=list(MODELS))
def test_schemathesis_finds_nothing(build, tmp_path: Path) -> None:  # noqa: ANN001
    model_dir = build(tmp_path / "deploy")
    with serving(model_dir, tmp_path) as info:
        url = info["url"]
        cmd = [str(CLI), "run", f"{url}/docs.json", "--url", url,
               "--checks", "all", "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES),
               "--generation-deterministic"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path,  # its .schemathesis/
                             env={"PATH": str(Path(sys.executable).parent), "NO_COLOR": "1", "HOME": str(tmp_path)})
        log = info["log"].read_text()
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "Traceback" not in log and "status=5" not in log, log[-3000:]
