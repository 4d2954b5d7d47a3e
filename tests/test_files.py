"""Temp folders and staged outputs: what a killed step leaves is removed by the next one."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipelines.files import pid_alive, private_tmp, staged_outputs


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_pid_alive():
    assert pid_alive(os.getpid()) and not pid_alive(dead_pid())


def test_private_tmp_points_every_temp_file_at_its_folder_and_removes_it(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    killed = tmp_path / f"dlops-pid{dead_pid()}-train-abc"
    (killed / "ckpt-x").mkdir(parents=True)
    mine = tmp_path / f"dlops-pid{os.getpid()}-other-abc"  # a live process's folder stays
    mine.mkdir()
    unrelated = tmp_path / "someone-elses"
    unrelated.mkdir()
    with private_tmp("deploy") as folder:
        assert folder.parent == tmp_path and folder.name.startswith(f"dlops-pid{os.getpid()}-deploy-")
        assert os.environ["TMPDIR"] == str(folder) and tempfile.gettempdir() == str(folder)
        with tempfile.TemporaryDirectory(prefix="bento-ctx-") as ctx:
            assert Path(ctx).parent == folder
        (folder / "left-by-a-library").write_text("x")
        assert not killed.exists() and mine.exists() and unrelated.exists()
    assert not folder.exists() and tempfile.gettempdir() == str(tmp_path)


def test_staged_outputs_removes_dead_steps_temp_dirs_and_can_replace(tmp_path):
    out = tmp_path / "deploy"
    out.mkdir()
    (out / "stale.json").write_text("{}")
    (tmp_path / f".evaluate.tmp-pid{dead_pid()}-xyz").mkdir()
    (tmp_path / ".train.tmp-oldformat").mkdir()
    live = tmp_path / f".split.tmp-pid{os.getpid()}-xyz"
    live.mkdir()
    with staged_outputs(out, replace=True) as tmp:
        (tmp / "model.onnx").write_text("m")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["deploy", live.name])
    assert [p.name for p in out.iterdir()] == ["model.onnx"]  # replace: nothing of the old one kept


def test_staged_outputs_failure_keeps_old_outputs(tmp_path):
    out = tmp_path / "evaluate"
    out.mkdir()
    (out / "metrics.json").write_text("old")
    with pytest.raises(RuntimeError), staged_outputs(out, replace=True) as tmp:
        (tmp / "metrics.json").write_text("new")
        raise RuntimeError("boom")
    assert (out / "metrics.json").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["evaluate"]
