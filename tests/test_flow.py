"""The Prefect flow runs the same seven step functions and writes what `dvc repro` writes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from pipelines.flow import stage_calls
from tests.conftest import ROOT, TINY


def test_stage_calls_follow_dvc_yaml():
    calls = stage_calls(ROOT / "dvc.yaml")
    assert [c[0] for c in calls] == ["collect", "split", "design", "configure", "train", "evaluate", "deploy"]
    assert all(module == f"pipelines.{stage}" for stage, module, _ in calls)
    assert calls[4][2] == {"split_dir": Path("artifacts/split"), "design_dir": Path("artifacts/design"),
                           "configure_dir": Path("artifacts/configure"), "out_dir": Path("artifacts/train")}


@pytest.mark.slow
def test_flow_under_prefect_test_harness(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / ".prefect"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    from prefect.testing.utilities import prefect_test_harness

    from pipelines.flow import build_flow

    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        raw[section].update(values)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    with prefect_test_harness(server_startup_timeout=120):
        summaries = build_flow()(params_path="params.yaml", dvc_yaml="dvc.yaml")
    assert list(summaries) == ["collect", "split", "design", "configure", "train", "evaluate", "deploy"]
    gate = yaml.safe_load((tmp_path / "artifacts" / "evaluate" / "gate.json").read_text())
    assert summaries["deploy"]["alias"] == ("champion" if gate["passed"] else "challenger")
    stages = yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"]
    outs = [next(iter(o)) if isinstance(o, dict) else o for s in stages.values()
            for key in ("outs", "metrics") for o in s.get(key, [])]
    missing = [o for o in outs if not (tmp_path / o).exists()]
    assert not missing, f"flow did not write {missing}"
