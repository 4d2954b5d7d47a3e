from pathlib import Path

from pipelines import tracking


def test_project_root_sees_through_dvc_temp_workspace(tmp_path):
    project = tmp_path / "proj"
    exp = project / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    exp.mkdir(parents=True)
    assert tracking.project_root(exp) == project.resolve()
    assert tracking.project_root(exp / "sub") == project.resolve()
    assert tracking.project_root(project) == project.resolve()


def test_default_uri_is_absolute_sqlite_in_project(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    exp = tmp_path / ".dvc" / "tmp" / "exps" / "tmpx"
    exp.mkdir(parents=True)
    uri = tracking.tracking_uri(exp)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert Path(uri.removeprefix("sqlite:///")).is_absolute() or uri.startswith("sqlite:////")
    assert tracking.default_artifact_location("e", exp) == (tmp_path.resolve() / "mlartifacts" / "e").as_uri()


def test_env_overrides(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"
    assert tracking.default_artifact_location("e") is None


def test_flatten():
    assert tracking.flatten("m", {"a": 1, "b": {"c": [1, 2]}}) == {"m.a": "1", "m.b.c": "[1, 2]"}
