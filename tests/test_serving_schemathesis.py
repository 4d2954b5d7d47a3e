"""Schemathesis (every check, fixed seed) against a real ``bentoml serve serving.service:Predictor`` of each
modality's demo model: whatever it generates from /docs.json, the service answers as its OpenAPI spec
says, never a 5xx. Runs the ``schemathesis`` CLI of the venv (a dev tool, not in requirements.lock:
skipped when it is not installed)."""

from __future__ import annotations

import shutil
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


TABLE_SCHEMA_BUG = pytest.mark.xfail(
    reason="product bug: a numeric column's schema is anyOf[number, string] (any string), the service takes numeric "
           "strings and NA spellings only: schemathesis' positive_data_acceptance (ST202) gets 400 for a "
           "schema-valid record", strict=False)

TEXT_SCHEMA_BUG = pytest.mark.xfail(
    reason="product bug: a text item's schema is any string of 1-10,000 characters; the service answers 400 for "
           "whitespace-only texts and texts of only characters the tokenizer drops (\\u0004): ST202", strict=False)

MODELS = {
    "image": build_demo_model,
    "text": pytest.param(build_text_model, marks=TEXT_SCHEMA_BUG),
    "tabular-classification": pytest.param(_tabular, marks=TABLE_SCHEMA_BUG),
    "tabular-regression": pytest.param(_regression, marks=TABLE_SCHEMA_BUG),
}


@pytest.mark.skipif(not CLI.exists() and shutil.which("schemathesis") is None, reason="schemathesis not installed")
@pytest.mark.parametrize("build", list(MODELS.values()), ids=list(MODELS))
def test_schemathesis_finds_nothing(build, tmp_path: Path) -> None:  # noqa: ANN001
    model_dir = build(tmp_path / "deploy")
    with serving(model_dir, tmp_path) as info:
        url = info["url"]
        cmd = [str(CLI) if CLI.exists() else "schemathesis", "run", f"{url}/docs.json", "--url", url,
               "--checks", "all", "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES),
               "--generation-deterministic"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path,  # its .schemathesis/
                             env={"PATH": str(Path(sys.executable).parent), "NO_COLOR": "1", "HOME": str(tmp_path)})
        log = info["log"].read_text()
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "Traceback" not in log and "status=5" not in log, log[-3000:]
