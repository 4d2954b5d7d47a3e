"""Hyper-parameter sweep: Optuna proposes params, the same step functions train and score them.

    python -m pipelines.sweep --space presets/sweeps/digits.yaml --trials 30 --jobs 2
    python -m pipelines.sweep --apply artifacts/sweeps/digits        # best params -> params.yaml
    dvc repro                                                        # trains them

The search space is a small YAML file of dotted params.yaml keys (``optim.lr: {low: 1e-4, high: 1e-2,
log: true}``, ``model.kwargs.hidden: {choices: [32, 64, 128]}``; see presets/sweeps/digits.yaml); every
other key keeps its params.yaml value. A bad space file stops with one line naming the key, before any work.

Layout of the sweep dir (default ``artifacts/sweeps/<study>``, the study named after the space file):
``sweep.json`` (the params and space the sweep started with: a resume uses these), ``optuna.db``,
``data/{collect,split}`` (made once, shared by every trial), ``trials/<n>/{design,configure,train,evaluate}``,
``logs/``, ``best.json``, ``trials.csv`` and the plots (parallel coordinates, param importances).

- Objective: the task's primary metric (evaluate's ``primary_metric``, higher is better) on the
  **validation** split, so choosing among trials never looks at test; the test value is recorded beside it.
- Pruning: each epoch, the task's monitored validation value (``val_loss``, negated: the study
  maximises) is reported to the trial; a median pruner stops the trials that fall behind.
- Parallelism: ``--jobs N`` worker processes (Lightning + torch are not thread-safe in one process),
  one torch thread each, sharing the study's storage; ``--prefect`` runs each trial as a Prefect task.
- Resume: run the same command again. RDB storage (``sqlite:///<dir>/optuna.db``, or ``--storage
  postgresql+psycopg://...``) keeps the study; a trial left RUNNING by a killed process is marked FAIL
  and enqueued again with the same params. ``--trials N`` counts completed + pruned trials in total.
- MLflow: one parent run per sweep; every trial's training run is its child (``mlflow.parentRunId``),
  with its params and the validation + test primary metric; the plots are the parent's artifacts.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from pipelines.files import ParamsError, pid_alive, read_json, write_json
from pipelines.params import apply_overrides

log = logging.getLogger(__name__)

SWEEP_JSON = "sweep.json"
BEST_JSON = "best.json"
DEFAULT_ROOT = Path("artifacts/sweeps")
PROJECT = Path(__file__).resolve().parents[1]
STORAGE_ENV = "DLOPS_SWEEP_STORAGE"  # how workers get a storage URL that may hold a password
SPEC_FIELDS = ("low", "high", "log", "step", "choices")
# Keys a trial cannot vary, and why (besides the sections collect/split read: the split is shared).
FIXED = {"evaluate": "it decides how a trial is scored, not what it learns",
         "deploy": "a trial does not deploy",
         "train.experiment": "every trial is a child run in the sweep's experiment",
         "train.strategy": "a trial trains in its worker's one process",
         "train.devices": "a trial trains in its worker's one process"}
PRUNE_AFTER_TRIALS = 5  # complete trials before any pruning
PRUNE_FROM = 0.25  # ... and only from this share of train.epochs on: the first epochs of a warm-up schedule
#                    (onecycle) or of a large batch say little about the end (measured: pruning from epoch 3
#                    of 40 stopped most batch-128 trials)


# ---------------------------------------------------------------- search space

@dataclasses.dataclass(frozen=True)
class Dimension:
    """One swept key: a range ``low..high`` (``log`` scale or a ``step`` grid; ints when both bounds
    are ints and the key's params.yaml value is not a float) or a list of ``choices``."""

    key: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()
    integer: bool = False

    def suggest(self, trial: Any) -> Any:
        """The trial's value (Optuna takes scalar choices only: lists travel as their JSON text)."""
        if self.choices:
            return self.value(trial.suggest_categorical(self.key, [_encode(c) for c in self.choices]))
        if self.integer:
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def value(self, raw: Any) -> Any:
        """A value as Optuna stores it -> the params.yaml value."""
        if self.choices:
            return dict(zip([_encode(c) for c in self.choices], self.choices))[raw]
        return raw


def _encode(choice: Any) -> Any:
    return json.dumps(choice) if isinstance(choice, (list, dict)) else choice


class _UniqueKeys(yaml.SafeLoader):
    """A YAML loader that refuses a key listed twice (plain YAML keeps the last one, silently)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ParamsError(f"{key}: listed twice")
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_space(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.load(Path(path).read_text(), Loader=_UniqueKeys)  # noqa: S506 (a SafeLoader)
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except ParamsError as exc:
        raise ParamsError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or not raw:
        raise ParamsError(f"{path}: expected a mapping of dotted params.yaml keys to ranges or choices")
    return raw


def shared_keys(dvc_yaml: Path = PROJECT / "dvc.yaml") -> tuple[str, ...]:
    """The params the collect and split stages depend on (dvc.yaml): made once for every trial."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    return tuple(k for name in ("collect", "split") for k in stages[name].get("params", []) if isinstance(k, str))


def parse_space(raw: dict[str, Any], base: dict[str, Any], where: str = "space") -> tuple[Dimension, ...]:
    """Check every entry of a space file against the params (``base``: the parsed params.yaml); one
    ``ParamsError`` naming the file and the key at fault."""
    from pipelines.params import parse_params

    dims = []
    shared = shared_keys()
    for key, spec in raw.items():
        try:
            _check_key(str(key), shared, base)
            dim = _dimension(str(key), spec, _lookup(base, str(key)))
            for probe in dim.choices or (dim.low, dim.high):  # every value it can take must parse
                parse_params(apply_overrides(base, {dim.key: probe}), complete=True)
        except ParamsError as exc:  # the message names the key once
            raise ParamsError(f"{where}: {key}: {str(exc).removeprefix(f'{key}: ')}") from None
        dims.append(dim)
    return tuple(dims)


def _check_key(key: str, shared: tuple[str, ...], base: dict[str, Any]) -> None:
    import typing

    from models import ModelError
    from pipelines.params import Params

    parts = key.split(".")
    sections = typing.get_type_hints(Params)
    if len(parts) < 2 or not all(parts):
        raise ParamsError("expected a dotted params.yaml key such as optim.lr")
    if parts[0] not in sections:
        raise ParamsError(f"unknown params section {parts[0]!r} (valid: {', '.join(sorted(sections))})")
    names = [f.name for f in dataclasses.fields(sections[parts[0]])]
    if parts[1] not in names:
        raise ParamsError(f"unknown params key (valid keys in '{parts[0]}': {', '.join(sorted(names))})")
    if len(parts) > 2 and (parts[:2] != ["model", "kwargs"] or len(parts) > 3):
        raise ParamsError("not a params.yaml key (only model.kwargs.<argument> goes below section.key)")
    if any(key == k or key.startswith(k + ".") for k in shared):
        raise ParamsError(f"the collect/split stages read {key.split('.')[0]}: the sweep splits the data once "
                          "and every trial shares it")
    for prefix, why in FIXED.items():
        if key == prefix or key.startswith(prefix + "."):
            raise ParamsError(f"cannot be swept: {why}")
    if parts[:2] == ["model", "kwargs"] and len(parts) == 3:
        from models.registry import check_kwargs

        try:
            check_kwargs(_lookup(base, "model.name"), {parts[2]: None})
        except ModelError as exc:
            raise ParamsError(str(exc)) from None


def _lookup(raw: dict[str, Any], key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _number(value: Any, name: str) -> float | int:
    """A bound: YAML 1.1 reads ``1e-4`` (no dot) as a string, so numeric strings count as numbers."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParamsError(f"{name}: expected a number, got {value!r}")
    return value


def _dimension(key: str, spec: Any, current: Any) -> Dimension:
    if not isinstance(spec, dict):
        raise ParamsError(f"expected {{low: .., high: ..}} or {{choices: [..]}}, got {spec!r}")
    unknown = sorted(set(spec) - set(SPEC_FIELDS))
    if unknown:
        raise ParamsError(f"{unknown[0]}: unknown field (valid: {', '.join(SPEC_FIELDS)})")
    if "choices" in spec:
        if set(spec) != {"choices"}:
            raise ParamsError("choices: give either choices or low/high, not both")
        if not isinstance(spec["choices"], list) or not spec["choices"]:
            raise ParamsError(f"choices: expected a non-empty list, got {spec['choices']!r}")
        encoded = [_encode(c) for c in spec["choices"]]
        if len(set(map(json.dumps, encoded))) != len(encoded):
            raise ParamsError("choices: a value is listed twice")
        return Dimension(key, choices=tuple(spec["choices"]))
    if "low" not in spec or "high" not in spec:
        raise ParamsError("expected both low and high (or choices)")
    low, high = _number(spec["low"], "low"), _number(spec["high"], "high")
    step = None if spec.get("step") is None else _number(spec["step"], "step")
    log_scale = spec.get("log", False)
    if not isinstance(log_scale, bool):
        raise ParamsError(f"log: expected true or false, got {log_scale!r}")
    if low > high:
        raise ParamsError(f"low {low} > high {high}")
    if log_scale and (low <= 0 or step is not None):
        raise ParamsError("log: needs low > 0 and no step")
    if step is not None and not 0 < step <= high - low:
        raise ParamsError(f"step: expected 0 < step <= high - low, got {step}")
    integer = all(isinstance(v, int) for v in (low, high, step or 1)) and not isinstance(current, float)
    return Dimension(key, low, high, log_scale, step, (), integer)


# ---------------------------------------------------------------- storage and trials

def open_study(cfg: dict[str, Any], create: bool = False) -> Any:
    import optuna

    url = cfg.get("storage") or os.environ.get(STORAGE_ENV)
    if not url:
        raise ParamsError(f"{cfg['dir']}: the study's storage holds a password, so it is not saved in "
                          f"{SWEEP_JSON}: pass --storage again")
    # sqlite: writers wait for each other (up to 60 s) instead of failing with "database is locked"
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    storage = optuna.storages.RDBStorage(url, engine_kwargs=engine)
    sampler = optuna.samplers.TPESampler(constant_liar=True)  # parallel trials: no near-duplicates
    pruner = optuna.pruners.MedianPruner(n_startup_trials=PRUNE_AFTER_TRIALS, n_warmup_steps=warmup_epochs(cfg))
    if create:
        return optuna.create_study(storage=storage, study_name=cfg["study"], direction="maximize",
                                   sampler=sampler, pruner=pruner, load_if_exists=True)
    return optuna.load_study(study_name=cfg["study"], storage=storage, sampler=sampler, pruner=pruner)


def warmup_epochs(cfg: dict[str, Any]) -> int:
    return max(2, int(cfg["base"]["train"]["epochs"] * PRUNE_FROM))


def tally(study: Any) -> dict[str, int]:
    """Trial counts: ``finished`` (complete + pruned) is what ``--trials`` counts; ``errors`` are
    trials whose code raised (not those of a killed process)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state == s for t in trials) for s in TrialState}
    return {"complete": count[TrialState.COMPLETE], "pruned": count[TrialState.PRUNED],
            "finished": count[TrialState.COMPLETE] + count[TrialState.PRUNED],
            "running": count[TrialState.RUNNING], "waiting": count[TrialState.WAITING],
            "failed": count[TrialState.FAIL],
            "errors": sum(t.state == TrialState.FAIL and "error" in t.user_attrs for t in trials)}


def recover_dead(study: Any) -> list[int]:
    """Trials left RUNNING by a process of this machine that no longer exists (``kill -9``): marked
    FAIL and enqueued again with the same params, so none is lost and none counts twice."""
    from optuna.trial import TrialState

    host, redone = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if pid is None:  # its claim died between ask and naming its owner (a claim takes milliseconds)
            if (datetime.datetime.now() - t.datetime_start).total_seconds() < 60:
                continue
        elif t.user_attrs.get("host") != host or pid_alive(pid):
            continue
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        if t.params or "overrides" in t.user_attrs:  # killed before its params were drawn: nothing to redo
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        redone.append(t.number)
        log.warning("trial %d was left RUNNING by process %s, which died: marked FAIL and enqueued again "
                    "with the same params", t.number, pid)
    return redone


def claim(study: Any, cfg: dict[str, Any], dims: Iterable[Dimension]) -> tuple[Any, dict[str, Any]] | None:
    """The next trial and its params, or None when the sweep has its trials (counting the running
    ones, so N workers never overshoot) or too many trials raised. One claim at a time per sweep dir."""
    from filelock import FileLock

    with FileLock(str(Path(cfg["dir"]) / ".claim.lock"), timeout=600):
        recover_dead(study)
        n = tally(study)
        if n["finished"] + n["running"] >= cfg["trials"] or n["errors"] >= cfg["max_failures"]:
            return None
        trial = study.ask()  # an enqueued retry first
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        overrides = {d.key: d.suggest(trial) for d in dims}
        trial.set_user_attr("overrides", overrides)
    return trial, overrides


def pruning_callback(trial: Any, monitor: str) -> Any:
    """A Lightning callback that reports ``monitor`` to the trial after each validation epoch and raises
    ``optuna.TrialPruned`` out of ``trainer.fit`` when the pruner gives up on the trial."""
    import optuna
    from lightning.pytorch.callbacks import Callback

    from pipelines.files import failpoint

    class PruneOnValidation(Callback):
        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.sanity_checking or monitor not in trainer.callback_metrics:
                return
            value, epoch = float(trainer.callback_metrics[monitor]), trainer.current_epoch
            if not math.isfinite(value):
                raise optuna.TrialPruned(f"{monitor} is {value} at epoch {epoch}")
            trial.report(-value, step=epoch)  # the study maximises; a monitored loss goes down
            failpoint(f"sweep.trial{trial.number}.epoch")  # the resume test's kill -9, mid-trial
            if trial.should_prune():
                raise optuna.TrialPruned(f"{monitor} {value:.4f} at epoch {epoch}: behind the other trials")

    return PruneOnValidation()


def trial_params(cfg: dict[str, Any], overrides: dict[str, Any], num_threads: int | None = None) -> Any:
    from pipelines.params import parse_params

    params = parse_params(apply_overrides(cfg["base"], overrides), complete=True)
    if num_threads is not None:
        params = dataclasses.replace(params, train=dataclasses.replace(params.train, num_threads=num_threads))
    return params


def validation_score(params: Any, split_dir: Path, train_dir: Path, metric: str) -> float | None:
    """The primary metric of the trained network on the validation split, scored as evaluate scores
    test (the task's own rule, fitted on the splits it fits on); None for a task that scores no
    validation split (a GAN's samples)."""
    from models.registry import create_model
    from pipelines.data import load_split, preprocess_state
    from pipelines.evaluate import load_network
    from pipelines.plugins import get_task

    split, state = read_json(split_dir / "split.json"), preprocess_state(split_dir)
    task = get_task(split["task"], params)
    if "val" not in task.scored_splits:
        return None
    net = task.head(load_network(train_dir / "model.pt"), state["target"])
    task.prepare(net, split_dir, state, split, create_model)
    source = {s: "val" if s == "test" else s for s in task.scored_splits}  # "test" := the val split
    y = {s: load_split(split_dir, source.get(s, s), preprocess=False)[1] for s in ("train", "val", "test")}
    out = {s: task.outputs(net, lambda name: load_split(split_dir, name)[0], source[s], state)
           for s in task.scored_splits}
    scored, _ = task.score(y, out, dataclasses.replace(params.evaluate, baselines=()))
    return float(scored[metric]) if metric in scored else None


def run_trial(cfg: dict[str, Any], trial: Any, overrides: dict[str, Any], client: Any,
              num_threads: int | None) -> float:
    """design -> configure -> train (pruned on the validation curve) -> evaluate in ``trials/<n>``;
    returns the validation primary metric."""
    from pipelines import configure, design, evaluate, train
    from pipelines.plugins import get_task

    params = trial_params(cfg, overrides, num_threads)
    split_dir, d = Path(cfg["split_dir"]), Path(cfg["dir"]) / "trials" / f"{trial.number:04d}"
    tags = {"mlflow.parentRunId": cfg["parent_run_id"], "sweep.study": cfg["study"], "sweep.trial": str(trial.number)}
    design.run(params, split_dir, d / "design")
    configure.run(params, split_dir, d / "design", d / "configure")
    monitor = get_task(cfg["task"], params).monitor
    callbacks = (pruning_callback(trial, monitor),) if monitor else ()
    summary = train.run(params, split_dir, d / "design", d / "configure", d / "train", callbacks=callbacks, tags=tags,
                        export=False)  # a trial does not deploy
    # the baselines do not depend on a trial's params: fitting them again in every trial would only cost time
    scoring = dataclasses.replace(params, evaluate=dataclasses.replace(params.evaluate, baselines=()))
    evaluate.run(scoring, split_dir, d / "train", d / "evaluate")
    metric = cfg["metric"]
    test = float(read_json(d / "evaluate" / "metrics.json")[metric])
    val = validation_score(params, split_dir, d / "train", metric)
    objective = test if val is None else val
    trial.set_user_attr("run_id", summary["run_id"])
    trial.set_user_attr("val_loss", summary["best_val_loss"])  # breaks ties (270 val rows: accuracy saturates)
    trial.set_user_attr(f"test_{metric}", test)
    trial.set_user_attr("objective", f"{'test' if val is None else 'val'}_{metric}")
    if val is not None:
        client.log_metric(summary["run_id"], f"val_{metric}", val)
    client.set_tag(summary["run_id"], "sweep.state", "COMPLETE")
    return objective


def _close_child(client: Any, cfg: dict[str, Any], number: int, state: str, why: str) -> None:
    """Mark trial ``number``'s training run (train.run closed it FAILED on the way out) ``state``."""
    runs = client.search_runs(
        [client.get_run(cfg["parent_run_id"]).info.experiment_id],
        filter_string=f"tags.`sweep.study` = '{cfg['study']}' and tags.`sweep.trial` = '{number}'", max_results=5)
    for run in runs:
        client.set_tag(run.info.run_id, "sweep.state", state)
        client.set_tag(run.info.run_id, "sweep.why", why[:4000])
        if state == "PRUNED":
            client.set_terminated(run.info.run_id, status="KILLED")


def work(sweep_dir: Path, once: bool = False, num_threads: int | None = None) -> int:
    """A worker: claim trials and run them until the sweep has its count; returns trials run."""
    import optuna
    from optuna.trial import TrialState

    from pipelines import tracking

    cfg = read_json(sweep_dir / SWEEP_JSON)
    study = open_study(cfg)
    dims = parse_space(cfg["space"], cfg["base"])
    client, done = tracking.get_client(), 0
    while (claimed := claim(study, cfg, dims)) is not None:
        trial, overrides = claimed
        log.info("trial %d: %s", trial.number, overrides)
        try:
            value = run_trial(cfg, trial, overrides, client, num_threads)
        except optuna.TrialPruned as exc:
            study.tell(trial, state=TrialState.PRUNED)
            _close_child(client, cfg, trial.number, "PRUNED", str(exc))
            log.info("trial %d pruned: %s", trial.number, exc)
        except (KeyboardInterrupt, SystemExit):  # stopped (Ctrl-C, SIGTERM): done again on resume
            study.tell(trial, state=TrialState.FAIL)
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            raise
        except Exception as exc:  # this trial's params (or a bug): the sweep goes on, up to --max-failures
            log.exception("trial %d failed", trial.number)
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:2000])
            study.tell(trial, state=TrialState.FAIL)
            _close_child(client, cfg, trial.number, "FAILED", f"{type(exc).__name__}: {exc}")
        else:
            study.tell(trial, value)
            log.info("trial %d: %s %.4f", trial.number, cfg["metric"], value)
        done += 1
        if once:
            break
    return done


# ---------------------------------------------------------------- the sweep (main process)

def prepare(sweep_dir: Path, space: Path | None, params_path: Path, study: str | None,
            storage: str | None, trials: int | None, max_failures: int) -> dict[str, Any]:
    """Validate everything, then (new sweep) snapshot params + space, collect and split once, create the
    study; (resume) check the space is unchanged. Returns the sweep's config (``sweep.json``)."""
    from pipelines.params import load_params

    old = read_json(sweep_dir / SWEEP_JSON) if (sweep_dir / SWEEP_JSON).exists() else None
    if old is None and space is None:
        raise ParamsError(f"{sweep_dir}: no sweep there: give --space to start one")
    space_raw = read_space(space) if space else old["space"]
    if old is not None:
        if space_raw != old["space"]:
            raise ParamsError(f"{space}: differs from the space the sweep in {sweep_dir} started with: "
                              "start a new sweep (--study NAME or --dir DIR)")
        if study not in (None, old["study"]):
            raise ParamsError(f"--study {study}: {sweep_dir} holds study {old['study']!r}")
        base = old["base"]
        if Path(params_path).exists() and yaml.safe_load(Path(params_path).read_text()) != base:
            log.warning("%s changed since the sweep started: resuming with the params it started with (%s)",
                        params_path, sweep_dir / SWEEP_JSON)
    else:
        load_params(params_path)  # every key of the base params checked, with the file's name
        base = yaml.safe_load(Path(params_path).read_text())
    parse_space(space_raw, base, str(space or sweep_dir / SWEEP_JSON))
    if base["train"].get("strategy", "auto") != "auto":
        raise ParamsError(f"{params_path}: train.strategy: a sweep trains each trial in one process: set it to auto")
    cfg = old or {"study": study or Path(space).stem, "dir": str(sweep_dir.resolve()), "base": base,
                  "space": space_raw, "parent_run_id": None}
    url = storage or cfg.get("storage") or (None if old else f"sqlite:///{sweep_dir.resolve() / 'optuna.db'}")
    if url is None or (old and storage and old.get("storage") not in (None, storage)):
        raise ParamsError(f"--storage: {sweep_dir} keeps its study in {old.get('storage') or 'a server with a password'}: "
                          "pass that URL (another storage would be another study)")
    cfg["storage"] = None if _has_password(url) else url
    os.environ[STORAGE_ENV] = url
    cfg.update(trials=trials or cfg.get("trials") or 20, max_failures=max_failures)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if old is None:
        cfg.update(_split_once(cfg, sweep_dir))
    write_json(sweep_dir / SWEEP_JSON, cfg)
    open_study(cfg, create=True)
    return cfg


def _has_password(url: str) -> bool:
    from sqlalchemy.engine import make_url

    return make_url(url).password is not None


def _split_once(cfg: dict[str, Any], sweep_dir: Path) -> dict[str, Any]:
    """collect + split with the base params, shared by every trial; the primary metric they imply."""
    from pipelines import collect, split
    from pipelines.params import parse_params
    from pipelines.plugins import get_task

    params = parse_params(cfg["base"], complete=True)
    data = sweep_dir / "data"
    collect.run(params, data / "collect")
    split.run(params, data / "collect", data / "split")
    info = read_json(data / "split" / "split.json")
    metric, why = get_task(info["task"], params).primary_metric(params.evaluate.metric, info)
    log.info("split once into %s; objective: validation %s (%s)", data / "split", metric, why)
    return {"split_dir": str((data / "split").resolve()), "task": info["task"], "metric": metric, "metric_why": why}


def open_parent_run(cfg: dict[str, Any]) -> str:
    """The sweep's MLflow run (created once; a resume marks it RUNNING again, owned by this process)."""
    from mlflow.entities import Param

    from pipelines import tracking

    client = tracking.get_client()
    owner = tracking.process_tags()  # close_dead_runs leaves a live owner's run alone
    if cfg.get("parent_run_id"):
        client.update_run(cfg["parent_run_id"], status="RUNNING")
        for key, value in owner.items():
            client.set_tag(cfg["parent_run_id"], key, value)
        return cfg["parent_run_id"]
    exp_id = tracking.ensure_experiment(client, cfg["base"]["train"]["experiment"])
    sha = tracking.git_sha()
    tags = {"sweep.study": cfg["study"], "sweep.dir": cfg["dir"], "mlflow.source.git.commit": sha, "git_sha": sha,
            "task": cfg["task"], **owner}
    run_id = client.create_run(exp_id, run_name=f"sweep-{cfg['study']}", tags=tags).info.run_id
    params = [Param(f"space.{k}", json.dumps(v)) for k, v in cfg["space"].items()]
    params += [Param("objective", f"val_{cfg['metric']} (maximise)"), Param("sampler", "TPE (constant liar)"),
               Param("pruner", f"median of -val_loss after {PRUNE_AFTER_TRIALS} trials, from epoch "
                                   f"{warmup_epochs(cfg)}")]
    client.log_batch(run_id, params=params, synchronous=True)
    return run_id


def _spawn(sweep_dir: Path, name: str, once: bool, num_threads: int | None) -> subprocess.Popen:
    """A worker process (``python -m pipelines.sweep --worker DIR``) logging to ``logs/<name>.log``."""
    cmd = [sys.executable, "-m", "pipelines.sweep", "--worker", str(sweep_dir)]
    cmd += ["--once"] if once else []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT), os.environ.get("PYTHONPATH")])))
    if num_threads is not None:  # N processes on the machine's cores: one thread each, no oversubscription
        cmd += ["--num-threads", str(num_threads)]
        env.update(OMP_NUM_THREADS=str(num_threads), MKL_NUM_THREADS=str(num_threads))
    (sweep_dir / "logs").mkdir(exist_ok=True)
    with open(sweep_dir / "logs" / f"{name}.log", "ab") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)


def run_workers(cfg: dict[str, Any], study: Any, jobs: int, num_threads: int | None) -> list[int]:
    """``jobs`` worker processes on the shared study; progress logged here as trials finish."""
    sweep_dir = Path(cfg["dir"])
    procs = [_spawn(sweep_dir, f"worker-{k}", False, num_threads) for k in range(jobs)]
    seen: set[int] = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(2)
            seen = _report_progress(study, cfg, seen)
    except BaseException:  # Ctrl-C / SIGTERM: the workers stop their trials (enqueued again) and exit
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=120)
        raise
    _report_progress(study, cfg, seen)
    return [p.returncode for p in procs]


def run_prefect(cfg: dict[str, Any], jobs: int, trials: int, num_threads: int | None) -> list[int]:
    """The trials as Prefect task runs of one flow (``jobs`` at a time), each a one-trial worker process.
    Ephemeral Prefect as in pipelines/flow.py, unless ``PREFECT_API_URL`` points at a server."""
    from pipelines.tracking import project_root

    os.environ.setdefault("PREFECT_HOME", str(project_root() / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.task_runners import ThreadPoolTaskRunner

    sweep_dir = Path(cfg["dir"])

    @task(name="trial", cache_policy=NO_CACHE)
    def one_trial(k: int) -> int:
        rc = _spawn(sweep_dir, f"prefect-{k}", True, num_threads).wait()
        if rc:
            raise RuntimeError(f"trial worker exited {rc}: see {sweep_dir / 'logs' / f'prefect-{k}.log'}")
        return rc

    @flow(name="dlops-sweep", task_runner=ThreadPoolTaskRunner(max_workers=jobs), log_prints=True)
    def dlops_sweep(study: str, trials: int) -> list[int]:
        futures = [one_trial.submit(k) for k in range(trials)]
        for f in futures:
            f.wait()
        return [0 if f.state.is_completed() else 1 for f in futures]

    return dlops_sweep(cfg["study"], trials)


def _report_progress(study: Any, cfg: dict[str, Any], seen: set[int]) -> set[int]:
    from optuna.trial import TrialState

    metric = cfg["metric"]
    for t in study.get_trials(deepcopy=False):
        if t.number in seen or not t.state.is_finished():
            continue
        seen.add(t.number)
        if t.state == TrialState.COMPLETE:
            log.info("trial %d complete: val %s %.4f, test %.4f  %s", t.number, metric, t.value,
                     t.user_attrs.get(f"test_{metric}", float("nan")), t.user_attrs.get("overrides"))
        else:
            log.info("trial %d %s%s", t.number, t.state.name.lower(), f": {t.user_attrs['error']}"
                     if "error" in t.user_attrs else "")
    return seen


def best_summary(study: Any, cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The best complete trial: what best.json, the parent run and ``--apply`` report."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    # the best objective; among equals (a small validation split saturates), the lowest val_loss
    best = max(complete, key=lambda t: (t.value, -t.user_attrs.get("val_loss", math.inf), -t.number))
    metric = cfg["metric"]
    return {"trial": best.number, "objective": best.user_attrs.get("objective", f"val_{metric}"),
            "value": best.value, "val_loss": best.user_attrs.get("val_loss"),
            f"test_{metric}": best.user_attrs.get(f"test_{metric}"),
            "params": best.user_attrs["overrides"], "run_id": best.user_attrs.get("run_id"),
            "dir": str(Path(cfg["dir"]) / "trials" / f"{best.number:04d}")}


def write_report(study: Any, sweep_dir: Path, target: str = "Objective Value") -> list[Path]:
    """trials.csv, and the parallel-coordinate and param-importance plots (PNG, matplotlib)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization import matplotlib as vis

    files = [sweep_dir / "trials.csv"]
    table = study.trials_dataframe()
    if "value" in table:  # a pruned trial's value is its last reported -val_loss, not the objective
        table.loc[table["state"] != "COMPLETE", "value"] = None
    table.to_csv(files[0], index=False)
    for name, plot in (("parallel_coordinate", vis.plot_parallel_coordinate),
                       ("param_importances", vis.plot_param_importances)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)  # matplotlib: a key with one value drawn
                ax = plot(study, target_name=target)
            fig = getattr(ax, "figure", None) or plt.gcf()
            fig.savefig(sweep_dir / f"{name}.png", dpi=110, bbox_inches="tight")
            plt.close("all")
            files.append(sweep_dir / f"{name}.png")
        except Exception as exc:  # too few trials for importances, say: the sweep itself is fine
            log.warning("no %s plot: %s", name, exc)
    return files


def finish(cfg: dict[str, Any], study: Any, status: str) -> dict[str, Any]:
    """best.json, trials.csv and the plots in the sweep dir, and on the parent run; the run closed."""
    from mlflow.entities import Metric, RunTag

    from pipelines import tracking

    sweep_dir, metric, n = Path(cfg["dir"]), cfg["metric"], tally(study)
    best = best_summary(study, cfg)
    if best is not None:
        write_json(sweep_dir / BEST_JSON, best)
    files = write_report(study, sweep_dir, f"val {metric}") + ([sweep_dir / BEST_JSON] if best else [])
    client, run_id, now = tracking.get_client(), cfg["parent_run_id"], int(time.time() * 1000)
    metrics = [Metric(f"trials_{k}", float(n[k]), now, n["finished"]) for k in ("complete", "pruned", "failed")]
    tags = [RunTag("sweep.trials", str(cfg["trials"]))]
    if best is not None:
        metrics += [Metric(f"best_val_{metric}", float(best["value"]), now, n["finished"])]
        if best[f"test_{metric}"] is not None:
            metrics.append(Metric(f"best_test_{metric}", float(best[f"test_{metric}"]), now, n["finished"]))
        tags += [RunTag("best.trial", str(best["trial"])), RunTag("best.run_id", str(best["run_id"])),
                 RunTag("best.params", json.dumps(best["params"]))]
    client.log_batch(run_id, metrics=metrics, tags=tags, synchronous=True)
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path="sweep")
    client.set_terminated(run_id, status=status)
    return {**n, "best": best, "files": [str(p) for p in files]}


def sweep(sweep_dir: Path, space: Path | None, params_path: Path, study_name: str | None, storage: str | None,
          trials: int | None, jobs: int, max_failures: int, prefect: bool) -> dict[str, Any]:
    """Start or resume the sweep in ``sweep_dir`` and run it to ``trials`` finished trials."""
    from filelock import FileLock

    cfg = prepare(sweep_dir, space, params_path, study_name, storage, trials, max_failures)
    cfg["parent_run_id"] = open_parent_run(cfg)
    write_json(sweep_dir / SWEEP_JSON, cfg)
    study = open_study(cfg)
    with FileLock(str(sweep_dir / ".claim.lock"), timeout=600):
        recover_dead(study)
    n = tally(study)
    left = max(0, cfg["trials"] - n["finished"] - n["running"])
    jobs = max(1, min(jobs, left))
    threads = 1 if jobs > 1 else None
    log.info("sweep %s: %d of %d trials finished, %d to go on %d %s; MLflow parent run %s", cfg["study"],
             n["finished"], cfg["trials"], left, jobs, "Prefect task slots" if prefect else "worker processes",
             cfg["parent_run_id"])
    try:
        if left:
            if prefect:
                seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
                codes = run_prefect(cfg, jobs, left, threads)
                _report_progress(study, cfg, seen)
            else:
                codes = run_workers(cfg, study, jobs, threads)
            for k, rc in enumerate(codes):
                if rc:
                    log.error("worker %d exited %d: see %s", k, rc, sweep_dir / "logs")
    except BaseException:
        try:  # what finished so far: best.json, plots, the parent run closed
            finish(cfg, study, "KILLED")
        except Exception as exc:
            log.warning("could not write the sweep's report: %s", exc)
        raise
    n = tally(study)
    return finish(cfg, study, "FINISHED" if n["finished"] >= cfg["trials"] else "FAILED")


# ---------------------------------------------------------------- --apply: best params -> params.yaml

_KEY = re.compile(r"(?P<indent> *)(?P<key>[A-Za-z_][\w.-]*):(?=[ \t]|$)")


def _content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _block_end(lines: list[str], i: int) -> int:
    """One past the last line of the value of the key on line ``i`` (deeper lines, or a block list
    written at the key's own indent); comment lines after it are not part of it."""
    k, end = _indent(lines[i]), i + 1
    for j in range(i + 1, len(lines)):
        if not _content(lines[j]):
            continue
        if _indent(lines[j]) > k or (_indent(lines[j]) == k and re.match(r" *-(\s|$)", lines[j])):
            end = j + 1
        else:
            break
    return end


def _split_comment(body: str) -> tuple[str, str]:
    """What follows ``key:`` on a line -> (the value, the padding + ``# comment``)."""
    quote = None
    for i, ch in enumerate(body):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"" and (i == 0 or body[i - 1] in " \t[{,"):
            quote = ch
        elif ch == "#" and (i == 0 or body[i - 1] in " \t"):
            value = body[:i].rstrip()
            return value, body[len(value):]
    return body.rstrip(), ""


def _flow(value: Any) -> str:
    """A value as one line of YAML that PyYAML reads back as it was (``1.0e-05``, not ``1e-05``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30, sort_keys=False)
    return text.strip().removesuffix("...").strip()


def _find(lines: list[str], parts: list[str]) -> tuple[int, int]:
    """(line of the deepest key of ``parts`` present as a block key, how many of ``parts`` it covers)."""
    start, end, found = 0, len(lines), -1
    for depth, part in enumerate(parts):
        child = next((_indent(line) for line in lines[start:end] if _content(line)), None)
        hit = next((i for i in range(start, end) if (m := _KEY.match(lines[i])) and len(m["indent"]) == child
                    and m["key"] == part), None)
        if hit is None:
            return found, depth
        found, start, end = hit, hit + 1, _block_end(lines, hit)
    return found, len(parts)


def _replace_value(lines: list[str], i: int, value: Any) -> list[str]:
    """Line ``i``'s value set to ``value`` (its comment kept at its column); a block value's lines go."""
    line = lines[i]
    head = line[:_KEY.match(line).end()]
    body, newline = line[len(head):].rstrip("\r\n"), line[len(line.rstrip("\r\n")):]
    old, comment = _split_comment(body)
    new = " " + _flow(value)
    if comment:  # at its column; a longer value pushes it right, keeping up to 2 spaces of its gap
        gap = len(comment) - len(comment.lstrip())
        new += " " * max(len(old) + gap - len(new), min(gap, 2)) + comment.lstrip()
    return lines[:i] + [head + new + (newline or "\n")] + lines[_block_end(lines, i):]


def _set_key(lines: list[str], key: str, value: Any) -> list[str]:
    parts = key.split(".")
    i, depth = _find(lines, parts)
    inline = i >= 0 and bool(_split_comment(lines[i][_KEY.match(lines[i]).end():])[0].strip())
    if depth == len(parts):
        return _replace_value(lines, i, value)
    nested = value
    for part in reversed(parts[depth + 1:]):
        nested = {part: nested}
    if inline:  # a parent written inline ({...}): rewrite it whole
        current = _lookup(yaml.safe_load("".join(lines)), ".".join(parts[:depth]))
        if not isinstance(current, dict):
            raise ParamsError(f"{key}: {'.'.join(parts[:depth])} is a value, not a section")
        return _replace_value(lines, i, _merged(current, parts[depth:], value))
    end = _block_end(lines, i) if i >= 0 else len(lines)
    indent = next((_indent(line) for line in lines[i + 1:end] if _content(line)), _indent(lines[i]) + 2) \
        if i >= 0 else 0
    if end and not lines[end - 1].endswith("\n"):
        lines[end - 1] += "\n"
    return lines[:end] + [f"{' ' * indent}{parts[depth]}: {_flow(nested)}\n"] + lines[end:]


def _merged(current: dict[str, Any], parts: list[str], value: Any) -> dict[str, Any]:
    out = dict(current)
    out[parts[0]] = _merged(out.get(parts[0]) or {}, parts[1:], value) if len(parts) > 1 else value
    return out


def set_yaml_values(text: str, values: dict[str, Any]) -> str:
    """``text`` (a params.yaml) with each dotted key set to its value, edited in place: every other
    line, comments included, stays as it was. The result is checked by parsing it back."""
    lines = text.splitlines(keepends=True)
    for key, value in values.items():
        lines = _set_key(lines, key, value)
    new = "".join(lines)
    if yaml.safe_load(new) != apply_overrides(yaml.safe_load(text), values):
        raise ParamsError(f"could not edit {', '.join(values)} in place: set them by hand")
    return new


def apply_best(sweep_dir: Path, params_path: Path, storage: str | None = None) -> dict[str, Any]:
    """Write the best trial's params into ``params_path`` in place (comments kept), so that ``dvc repro``
    trains them; warns where the file differs from the params the sweep ran with elsewhere."""
    from pipelines import tracking
    from pipelines.params import parse_params

    if not (sweep_dir / SWEEP_JSON).exists():
        raise ParamsError(f"{sweep_dir}: not a sweep dir (no {SWEEP_JSON})")
    cfg = read_json(sweep_dir / SWEEP_JSON)
    if storage:
        os.environ[STORAGE_ENV] = storage
    best = best_summary(open_study(cfg), cfg)
    if best is None:
        raise ParamsError(f"{sweep_dir}: no trial has completed yet")
    text = Path(params_path).read_text()
    new = set_yaml_values(text, best["params"])
    try:
        parse_params(yaml.safe_load(new), complete=True)
    except ParamsError as exc:
        raise ParamsError(f"{params_path} + trial {best['trial']}: {exc}") from None
    current, base = tracking.flatten("", yaml.safe_load(text)), tracking.flatten("", cfg["base"])
    drift = sorted(k for k in set(current) | set(base) if current.get(k) != base.get(k)
                   and not any(k == s or k.startswith(s + ".") for s in best["params"]))
    if drift:
        log.warning("%s differs from the params the sweep ran with at %s: the best trial was not trained "
                    "with these", params_path, ", ".join(drift))
    tmp = Path(params_path).with_name(f".{Path(params_path).name}.tmp-pid{os.getpid()}")
    tmp.write_text(new)
    os.replace(tmp, params_path)
    return best


# ---------------------------------------------------------------- command line

def _terminated(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipelines.sweep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", type=Path, help="search-space YAML (see presets/sweeps/digits.yaml)")
    ap.add_argument("--trials", type=int, default=None, help="completed + pruned trials in total (default 20)")
    ap.add_argument("--jobs", type=int, default=1, help="trials at a time, one process each (default 1)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help="the params every trial starts from")
    ap.add_argument("--dir", type=Path, default=None, help="sweep dir (default artifacts/sweeps/<study>)")
    ap.add_argument("--study", default=None, help="study name (default: the space file's name)")
    ap.add_argument("--storage", default=None, help="Optuna RDB URL (default sqlite:///<dir>/optuna.db)")
    ap.add_argument("--max-failures", type=int, default=5, help="stop after this many trials raised (default 5)")
    ap.add_argument("--prefect", action="store_true", help="run the trials as Prefect tasks of one flow")
    ap.add_argument("--apply-best", action="store_true", help="then write the best params into --params")
    ap.add_argument("--apply", type=Path, default=None, metavar="SWEEP_DIR",
                    help="only write the best params of SWEEP_DIR into --params")
    ap.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--num-threads", type=int, default=None, help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> None:
    from models import ModelError
    from pipelines.files import DataError, private_tmp
    from pipelines.logs import setup_logging

    ap = _parser()
    args = ap.parse_args(argv)
    if args.apply is None and args.worker is None and args.space is None and args.dir is None:
        ap.error("--space is required (or --dir of a sweep to resume, or --apply SWEEP_DIR)")
    if (args.trials is not None and args.trials < 1) or args.jobs < 1 or args.max_failures < 1:
        ap.error("--trials, --jobs and --max-failures must be >= 1")
    setup_logging()
    signal.signal(signal.SIGTERM, _terminated)
    try:
        if args.worker is not None:
            with private_tmp("sweep-worker"):
                work(args.worker.resolve(), args.once, args.num_threads)
            return
        if args.apply is not None:
            best = apply_best(args.apply, args.params, args.storage)
            print(f"{args.params}: trial {best['trial']}'s params written ({best['objective']} {best['value']:.4f}): "
                  f"{json.dumps(best['params'])}; `dvc repro` trains them")
            return
        sweep_dir = args.dir or DEFAULT_ROOT / (args.study or args.space.stem)
        with private_tmp("sweep"):
            summary = sweep(sweep_dir, args.space, args.params, args.study, args.storage, args.trials, args.jobs,
                            args.max_failures, args.prefect)
        if args.apply_best and summary["best"] is not None:
            apply_best(sweep_dir, args.params, args.storage)
            print(f"{args.params}: best params written; `dvc repro` trains them")
    except (ParamsError, DataError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    _print_summary(summary)
    if summary["finished"] < read_json(sweep_dir / SWEEP_JSON)["trials"]:
        sys.exit(1)


def _print_summary(summary: dict[str, Any]) -> None:
    best = summary["best"]
    print(f"trials: {summary['complete']} complete, {summary['pruned']} pruned, {summary['failed']} failed")
    if best:
        test = next(v for k, v in best.items() if k.startswith("test_"))
        print(f"best: trial {best['trial']}, {best['objective']} {best['value']:.4f} (test {test}), "
              f"params {json.dumps(best['params'])}, MLflow run {best['run_id']}")
    print("files: " + ", ".join(summary["files"]))


if __name__ == "__main__":
    main()
