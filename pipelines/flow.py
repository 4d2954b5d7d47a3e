"""The seven steps as a Prefect flow: a thin layer over the same ``run`` functions DVC calls.

Stage order and paths are read from dvc.yaml (the only place paths are written), so
``python -m pipelines.flow`` writes exactly the artifacts ``dvc repro`` writes. Prefect runs in
ephemeral mode (a temporary local API per process) with a project-local ``PREFECT_HOME``, unless
``PREFECT_API_URL`` points at a server.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shlex
from pathlib import Path
from typing import Any

import yaml

from pipelines.tracking import project_root

log = logging.getLogger(__name__)

# Steps whose failures can be transient (database locks, a registry or tracking server hiccup).
RETRIES = {"train": 2, "evaluate": 2, "deploy": 2}


def stage_calls(dvc_yaml: str | Path = "dvc.yaml") -> list[tuple[str, str, dict[str, Path]]]:
    """``(stage, module, path kwargs)`` for each stage, parsed from its ``python -m`` command."""
    stages = yaml.safe_load(Path(dvc_yaml).read_text())["stages"]
    calls = []
    for name, stage in stages.items():
        argv = shlex.split(stage["cmd"])
        if argv[:2] != ["python", "-m"] or (len(argv) - 3) % 2:
            raise ValueError(f"{dvc_yaml}: stages.{name}.cmd: expected 'python -m MODULE --name PATH ...'")
        flags = dict(zip(argv[3::2], argv[4::2]))
        calls.append((name, argv[2], {k.removeprefix("--").replace("-", "_"): Path(v) for k, v in flags.items()}))
    return calls


def _retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Bad params/data/architecture fail the same way every time: don't retry those."""
    from models import ModelError
    from pipelines.files import DataError
    from pipelines.params import ParamsError

    try:
        state.result()
    except (ParamsError, DataError, ModelError):
        return False
    except Exception:
        return True
    return False


def build_flow() -> Any:
    """The ``@flow``; prefect is imported here so that ``PREFECT_HOME`` can be set first."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    from pipelines.params import load_params

    @flow(name="dlops-pipeline", log_prints=True)
    def dlops_pipeline(params_path: str = "params.yaml", dvc_yaml: str = "dvc.yaml") -> dict[str, Any]:
        params = load_params(params_path)
        summaries: dict[str, Any] = {}
        for stage, module, paths in stage_calls(dvc_yaml):
            step = task(
                importlib.import_module(module).run, name=stage, retries=RETRIES.get(stage, 0),
                retry_delay_seconds=5, retry_condition_fn=_retry_unless_user_error, cache_policy=NO_CACHE,
            )
            summaries[stage] = step(params, **paths)
        return summaries

    return dlops_pipeline


def main() -> None:
    from pipelines.logs import setup_logging

    ap = argparse.ArgumentParser(prog="python -m pipelines.flow", description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--dvc-yaml", default="dvc.yaml")
    args = ap.parse_args()
    setup_logging()
    os.environ.setdefault("PREFECT_HOME", str(project_root() / ".prefect"))
    # The ephemeral API's telemetry heartbeat writes to its sqlite as the flow run starts, and one of
    # the two writers gets "database is locked" (a ~90-line traceback). Off also because it phones home.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from pipelines.files import private_tmp

    with private_tmp("flow"):  # every temp file in one folder, removed at exit (or by the next step)
        summaries = build_flow()(params_path=args.params, dvc_yaml=args.dvc_yaml)
    for stage, summary in summaries.items():
        print(f"{stage}: {summary}")


if __name__ == "__main__":
    main()
