"""Stage logs carry our lines and the libraries' real warnings, not their chatter."""

from __future__ import annotations

import logging
import os
import warnings

from pipelines import flow
from pipelines.logs import LIGHTNING_INFO_LOGGER, TORCHVISION_OPS_LOGGER, setup_logging


def _unset(monkeypatch, name: str) -> None:
    monkeypatch.setenv(name, "")  # so that the test's own setdefault is undone too
    monkeypatch.delenv(name)


def test_setup_logging_silences_the_known_noise_only(monkeypatch):
    _unset(monkeypatch, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        setup_logging()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and "
                      "treespec.is_leaf()` instead.", FutureWarning)
        warnings.warn("some other deprecation", FutureWarning)
    assert [str(w.message) for w in caught] == ["some other deprecation"]
    assert not logging.getLogger(TORCHVISION_OPS_LOGGER).isEnabledFor(logging.WARNING)
    assert logging.getLogger(TORCHVISION_OPS_LOGGER).isEnabledFor(logging.ERROR)
    assert not logging.getLogger(LIGHTNING_INFO_LOGGER).isEnabledFor(logging.INFO)
    assert logging.getLogger(LIGHTNING_INFO_LOGGER).isEnabledFor(logging.WARNING)
    assert logging.getLogger("torch.onnx").isEnabledFor(logging.WARNING)  # the exporter's other warnings stay
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"


def test_progress_bar_choice_of_the_user_is_kept(monkeypatch):
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")
    setup_logging()
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "true"


def test_flow_turns_off_the_ephemeral_servers_telemetry(monkeypatch, tmp_path):
    """The telemetry heartbeat raced the flow for the ephemeral API's sqlite ("database is locked")."""
    seen = {}

    def fake_flow(**kwargs):
        seen.update(os.environ)
        return {}

    _unset(monkeypatch, "PREFECT_SERVER_ANALYTICS_ENABLED")
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.setattr(flow, "build_flow", lambda: fake_flow)
    monkeypatch.setattr("sys.argv", ["python -m pipelines.flow"])
    flow.main()
    assert seen["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"

    import prefect.server.services.telemetry  # noqa: F401 - registers the heartbeat
    from prefect.server.services.perpetual_services import get_enabled_perpetual_services
    from prefect.settings import PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings

    with temporary_settings(updates={PREFECT_SERVER_ANALYTICS_ENABLED: False}):
        running = {c.function.__name__ for c in get_enabled_perpetual_services(ephemeral=True)}
    assert "send_telemetry_heartbeat" not in running
