"""The seven steps as a Prefect flow: a thin layer over the same ``run`` functions DVC calls.

Stage order and paths are read from dvc.yaml (the only place paths are written), so
``python -m pipelines.flow`` writes exactly the artifacts ``dvc repro`` writes. Prefect runs in
ephemeral mode (a temporary local API per process) with a project-local ``PREFECT_HOME``, unless
``PREFECT_API_URL`` points at a server.

``overrides`` (``--set train.epochs=3``, or the deployment's ``overrides`` parameter) are dotted
params.yaml keys merged over the file and validated with it before any step runs.

``--deploy`` registers the flow with a Prefect server (``PREFECT_API_URL``) as a deployment on a
process work pool: the code is this project directory (``--source``), where the worker runs the flow,
so artifacts land in that directory as with ``dvc repro``; ``--cron`` schedules it, ``--set`` makes
its default overrides. ``prefect worker start --pool POOL`` then executes its runs.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import os
import shlex
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from pipelines.tracking import project_root

log = logging.getLogger(__name__)

# Steps whose failures can be transient (database locks, a registry or tracking server hiccup).
RETRIES = {"train": 2, "evaluate": 2, "deploy": 2}
RETRY_DELAY_S = 5

FLOW_NAME = "dlops-pipeline"
# A module path (not ``pipelines/flow.py:...``): the worker imports ``pipelines.flow`` from the
# deployment's working directory, as ``python -m pipelines.flow`` does, so ``pipelines`` is a package.
ENTRYPOINT = "pipelines.flow.dlops_pipeline"

# Test-only fault injection: ``DLOPS_FLOW_FAIL_ONCE=<stage>`` makes that step's first attempt raise
# before it does anything, so its retry (``RETRIES``) shows in the task run's states.
FAIL_ONCE_ENV = "DLOPS_FLOW_FAIL_ONCE"


class InjectedFailure(RuntimeError):
    """Raised by ``DLOPS_FLOW_FAIL_ONCE``: a transient failure, retried like any other."""


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


def load_run_params(params_path: str | Path = "params.yaml", overrides: Mapping[str, Any] | None = None) -> Any:
    """``pipelines.params.load_params`` with ``overrides`` (dotted keys) merged over the file."""
    from pipelines.params import load_params

    return load_params(params_path, overrides)


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["train.epochs=3", "evaluate.baselines=[logreg]"]`` -> overrides; values are YAML."""
    from pipelines.params import ParamsError

    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ParamsError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=3")
        try:
            overrides[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ParamsError(f"--set {item!r}: value is not valid YAML: {exc}") from None
    return overrides


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


def _fail_first_attempt(fn: Callable[..., Any], stage: str) -> Callable[..., Any]:
    @functools.wraps(fn)
    def step(*args: Any, **kwargs: Any) -> Any:
        from prefect.runtime import task_run

        if task_run.run_count <= 1:
            raise InjectedFailure(f"{FAIL_ONCE_ENV}={stage}: failing the first attempt of {stage}")
        return fn(*args, **kwargs)

    return step


@functools.cache
def build_flow() -> Any:
    """The ``@flow``; prefect is imported here so that ``PREFECT_HOME`` can be set first."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    from pipelines.files import private_tmp

    @flow(name=FLOW_NAME, log_prints=True)
    def dlops_pipeline(params_path: str = "params.yaml", dvc_yaml: str = "dvc.yaml",
                       overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """The seven steps; ``overrides``: dotted params.yaml keys -> values, e.g. {"train.epochs": 3}."""
        params = load_run_params(params_path, overrides)  # every key checked before any step
        calls = stage_calls(dvc_yaml)
        summaries: dict[str, Any] = {}
        with private_tmp("flow"):  # every temp file in one folder, removed at exit (or by the next step)
            for stage, module, paths in calls:
                fn = importlib.import_module(module).run
                if os.environ.get(FAIL_ONCE_ENV) == stage:
                    fn = _fail_first_attempt(fn, stage)
                step = task(
                    fn, name=stage, retries=RETRIES.get(stage, 0), retry_delay_seconds=RETRY_DELAY_S,
                    retry_condition_fn=_retry_unless_user_error, cache_policy=NO_CACHE,
                )
                summaries[stage] = step(params, **paths)
        return summaries

    return dlops_pipeline


def __getattr__(name: str) -> Any:
    """``pipelines.flow.dlops_pipeline``, the deployment's entrypoint, built on first access."""
    if name == "dlops_pipeline":
        return build_flow()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def deploy(name: str, pool: str, cron: str | None = None, timezone: str = "UTC",
           overrides: Mapping[str, Any] | None = None, params_path: str = "params.yaml",
           dvc_yaml: str = "dvc.yaml", source: str | Path | None = None, work_queue: str | None = None,
           paused: bool = False) -> Any:
    """Create or update the deployment ``dlops-pipeline/<name>`` on work pool ``pool`` (a process pool:
    ``prefect work-pool create POOL --type process``) with the code in ``source`` (the project). Its
    parameters (and ``overrides``) are checked against ``source``'s params.yaml first. Returns its id."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.schedules import Cron
    from prefect.settings import PREFECT_API_URL

    source = Path(source or project_root()).resolve()
    if not PREFECT_API_URL.value():
        raise SystemExit("--deploy needs a Prefect server: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api)")
    load_run_params(source / params_path, overrides)
    stage_calls(source / dvc_yaml)
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            raise SystemExit(f"work pool {pool!r} not found on {PREFECT_API_URL.value()}: "
                             f"prefect work-pool create {pool} --type process") from None
    deployment = flow.from_source(source=str(source), entrypoint=ENTRYPOINT).to_deployment(
        name=name, work_pool_name=pool, work_queue_name=work_queue,
        schedules=[Cron(cron, timezone=timezone)] if cron else None, paused=paused,
        parameters={"params_path": params_path, "dvc_yaml": dvc_yaml, "overrides": dict(overrides or {})},
        tags=["dlops"], description="The seven DVC steps (pipelines/flow.py) on a work pool",
    )
    # deployment.apply(), not flow.deploy(): Prefect 3.8.8's deploy() lists the pool's workers with
    # limit/offset null, which its own server rejects (422 on /work_pools/<pool>/workers/filter).
    return deployment.apply()


def main(argv: list[str] | None = None) -> None:
    from pipelines.logs import setup_logging
    from pipelines.params import ParamsError

    ap = argparse.ArgumentParser(prog="python -m pipelines.flow", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--dvc-yaml", default="dvc.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a params.yaml key (dotted; the value is YAML), repeatable")
    dep = ap.add_argument_group("deployment (needs PREFECT_API_URL)")
    dep.add_argument("--deploy", action="store_true", help="create/update the deployment instead of running")
    dep.add_argument("--name", default="dlops", help="deployment name (default: dlops)")
    dep.add_argument("--pool", default="dlops", help="process work pool (default: dlops)")
    dep.add_argument("--work-queue", default=None)
    dep.add_argument("--cron", default=None, help='schedule, e.g. "0 3 * * *" (none: runs on demand only)')
    dep.add_argument("--timezone", default="UTC")
    dep.add_argument("--paused", action="store_true", help="create the schedule paused")
    dep.add_argument("--source", default=None, help="project directory the worker runs in (default: this one)")
    args = ap.parse_args(argv)
    setup_logging()
    os.environ.setdefault("PREFECT_HOME", str(project_root() / ".prefect"))
    # The ephemeral API's telemetry heartbeat writes to its sqlite as the flow run starts, and one of
    # the two writers gets "database is locked" (a ~90-line traceback). Off also because it phones home.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    try:
        overrides = parse_set(args.overrides)
        if args.deploy:
            deployment_id = deploy(args.name, args.pool, args.cron, args.timezone, overrides, args.params,
                                   args.dvc_yaml, args.source, args.work_queue, args.paused)
            print(f"deployment {FLOW_NAME}/{args.name}: {deployment_id} (pool {args.pool}, "
                  f"schedule {args.cron or 'none'}); run it: prefect deployment run '{FLOW_NAME}/{args.name}'")
            return
        load_run_params(args.params, overrides)  # a bad key fails here, before prefect starts
    except ParamsError as exc:
        sys.exit(f"error: {exc}")
    from pipelines.files import private_tmp

    with private_tmp("flow"):  # prefect's own temp files too (the ephemeral API)
        summaries = build_flow()(params_path=args.params, dvc_yaml=args.dvc_yaml, overrides=overrides)
    for stage, summary in summaries.items():
        print(f"{stage}: {summary}")


if __name__ == "__main__":
    main()
