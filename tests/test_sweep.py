"""pipelines/sweep.py: search-space checks, the in-place params.yaml edit, pruning, recovery of killed
trials; then one real sweep on digits (tiny CNN, 3 epochs), SIGKILLed mid-trial and resumed on 2 worker
processes: every trial counted once, MLflow parent + child runs, plots, ``--apply``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pipelines import sweep
from pipelines.files import ParamsError
from pipelines.params import load_params
from tests.conftest import ROOT, TINY

PARAMS = ROOT / "params.yaml"


def base() -> dict:
    return yaml.safe_load(PARAMS.read_text())


# ---------------------------------------------------------------- search space


def test_preset_space_parses_against_params_yaml() -> None:
    dims = {d.key: d for d in sweep.parse_space(sweep.read_space(ROOT / "presets/sweeps/digits.yaml"), base())}
    assert dims["optim.lr"].log and dims["optim.lr"].low == pytest.approx(3e-4) and not dims["optim.lr"].integer
    assert dims["model.kwargs.channels"].choices == ([16, 32], [32, 64])
    assert dims["train.batch_size"].choices == (32, 64, 128)


def test_dimensions_suggest_params_yaml_values() -> None:
    import optuna

    dims = sweep.parse_space({
        "optim.lr": {"low": "1e-4", "high": 1.0e-2, "log": True},  # YAML 1.1 reads 1e-4 as a string
        "train.epochs": {"low": 2, "high": 10, "step": 2},
        "model.kwargs.dropout": {"low": 0, "high": 1},  # a float in params.yaml: a float range
        "model.kwargs.channels": {"choices": [[8, 16], [16, 32]]},
    }, base())
    kinds = {d.key: d.integer for d in dims}
    assert kinds == {"optim.lr": False, "train.epochs": True, "model.kwargs.dropout": False,
                     "model.kwargs.channels": False}
    trial = optuna.trial.FixedTrial({"optim.lr": 1e-3, "train.epochs": 4, "model.kwargs.dropout": 0.5,
                                     "model.kwargs.channels": "[16, 32]"})
    assert {d.key: d.suggest(trial) for d in dims} == {
        "optim.lr": 1e-3, "train.epochs": 4, "model.kwargs.dropout": 0.5, "model.kwargs.channels": [16, 32]}


@pytest.mark.parametrize("entry, words", [
    ({"optim.lrr": {"low": 1, "high": 2}}, ["optim.lrr", "unknown params key", "lr"]),
    ({"optimm.lr": {"low": 1, "high": 2}}, ["optimm.lr", "unknown params section"]),
    ({"optim.lr": {"low": 1.0e-2, "high": 1.0e-4}}, ["optim.lr", "low 0.01 > high 0.0001"]),
    ({"model.kwargs.hidden": {"choices": []}}, ["model.kwargs.hidden", "non-empty list"]),
    ({"model.kwargs.hidden": {"choices": [32, 32]}}, ["model.kwargs.hidden", "listed twice"]),
    ({"model.kwargs.hiden": {"choices": [32]}}, ["model.kwargs.hiden", "no such argument"]),
    ({"optim.momentum": {"low": 0.5, "high": 1.5}}, ["optim.momentum", "[0, 1)"]),
    ({"optim.lr": {"low": 0.0, "high": 1.0, "log": True}}, ["optim.lr", "low > 0"]),
    ({"optim.lr": {"lo": 0.1, "high": 1.0}}, ["optim.lr", "lo: unknown field"]),
    ({"optim.lr": {"low": 0.1, "high": 1.0, "choices": [0.1]}}, ["optim.lr", "not both"]),
    ({"optim.lr": 0.1}, ["optim.lr", "low"]),
    ({"optim.lr": {"low": "fast", "high": 1.0}}, ["optim.lr", "expected a number"]),
    ({"split.seed": {"choices": [1, 2]}}, ["split.seed", "splits the data once"]),
    ({"data.source": {"choices": ["sklearn:digits"]}}, ["data.source", "splits the data once"]),
    ({"evaluate.metric": {"choices": ["accuracy"]}}, ["evaluate.metric", "cannot be swept"]),
    ({"train.strategy": {"choices": ["ddp"]}}, ["train.strategy", "cannot be swept"]),
    ({"lr": {"low": 0.1, "high": 1.0}}, ["lr", "dotted params.yaml key"]),
])
def test_bad_space_is_one_line_naming_the_key(entry: dict, words: list[str]) -> None:
    with pytest.raises(ParamsError) as err:
        sweep.parse_space(entry, base(), "space.yaml")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"space.yaml: {next(iter(entry))}: ")
    for word in words:
        assert word in message


def test_space_file_with_a_key_twice(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text("optim.lr: {low: 0.001, high: 0.01}\noptim.lr: {low: 0.1, high: 0.2}\n")
    with pytest.raises(ParamsError, match=r"space.yaml: optim.lr: listed twice"):
        sweep.read_space(path)


def test_cli_refuses_a_bad_space_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # main() would set pytest's SIGTERM handler
    path = tmp_path / "space.yaml"
    path.write_text("optim.lr: {low: 0.01, high: 0.001}\n")
    with pytest.raises(SystemExit) as exit_:
        sweep.main(["--space", str(path), "--params", str(PARAMS), "--dir", str(tmp_path / "sweep")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {path}: optim.lr: low 0.01 > high 0.001"]
    assert not (tmp_path / "sweep").exists()


# ---------------------------------------------------------------- --apply: the in-place edit


def test_set_yaml_values_edits_only_those_lines() -> None:
    text = PARAMS.read_text()
    values = {"optim.lr": 1.0e-5, "model.kwargs.channels": [16, 32], "train.batch_size": 32,
              "optim.label_smoothing": 0.0}
    new = sweep.set_yaml_values(text, values)
    changed = [(a, b) for a, b in zip(text.splitlines(), new.splitlines()) if a != b]
    assert len(new.splitlines()) == len(text.splitlines()) and len(changed) == len(values)
    lr_old, lr_new = next(pair for pair in changed if pair[0].lstrip().startswith("lr:"))
    assert lr_new.startswith("  lr: 1.0e-05 ")  # PyYAML reads "1e-05" as a string
    assert lr_new.index("#") == lr_old.index("#") and lr_new.split("#", 1)[1] == lr_old.split("#", 1)[1]
    raw = yaml.safe_load(new)
    assert raw["optim"]["lr"] == 1.0e-5 and raw["model"]["kwargs"]["channels"] == [16, 32]
    assert raw["train"]["batch_size"] == 32


def test_set_yaml_values_block_lists_inline_maps_and_new_keys() -> None:
    text = ("# top comment\nmodel:\n  name: cnn   # arch\n  kwargs:\n    channels:\n    - 8\n    - 16\n"
            "    # between\n    hidden: 32\noptim: {lr: 0.1, loss: auto}  # inline\ntrain:\n  epochs: 3\n")
    new = sweep.set_yaml_values(text, {"model.kwargs.channels": [4, 8], "model.kwargs.dropout": 0.5,
                                       "optim.lr": 0.02, "train.seed": 3})
    assert yaml.safe_load(new) == {"model": {"name": "cnn", "kwargs": {"channels": [4, 8], "hidden": 32,
                                                                       "dropout": 0.5}},
                                   "optim": {"lr": 0.02, "loss": "auto"}, "train": {"epochs": 3, "seed": 3}}
    assert "# top comment" in new and "name: cnn   # arch" in new and "    # between" in new
    assert "optim: {lr: 0.02, loss: auto}  # inline" in new


# ---------------------------------------------------------------- pruning and recovery


def test_pruning_callback_reports_the_negated_loss_and_prunes() -> None:
    import optuna
    import torch

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=-1.0))
    trial = study.ask()
    callback = sweep.pruning_callback(trial, "val_loss")
    trainer = SimpleNamespace(sanity_checking=False, current_epoch=0, callback_metrics={"val_loss": torch.tensor(0.5)})
    callback.on_validation_end(trainer, None)  # -0.5 >= -1: goes on
    trainer.current_epoch, trainer.callback_metrics["val_loss"] = 1, torch.tensor(2.0)
    with pytest.raises(optuna.TrialPruned, match="val_loss 2.0000 at epoch 1"):
        callback.on_validation_end(trainer, None)
    assert study.trials[0].intermediate_values == {0: -0.5, 1: -2.0}
    trainer.callback_metrics["val_loss"] = torch.tensor(float("nan"))
    with pytest.raises(optuna.TrialPruned, match="nan"):
        callback.on_validation_end(trainer, None)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_dead_trials_are_failed_and_enqueued_again_and_claims_count_running(tmp_path: Path) -> None:
    import optuna
    from optuna.trial import TrialState

    study = optuna.create_study(direction="maximize")
    dims = sweep.parse_space({"optim.lr": {"low": 1.0e-3, "high": 1.0e-1, "log": True}}, base())
    cfg = {"dir": str(tmp_path), "trials": 3, "max_failures": 2}
    killed, _ = sweep.claim(study, cfg, dims)
    study.tell(sweep.claim(study, cfg, dims)[0], 0.9)
    study._storage.set_trial_user_attr(killed._trial_id, "pid", dead_pid())  # as if kill -9'd
    assert sweep.recover_dead(study) == [killed.number]
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.WAITING]
    assert study.trials[2].user_attrs == {"retry_of": killed.number}
    retry, overrides = sweep.claim(study, cfg, dims)  # the enqueued retry comes first, with the same params
    assert retry.number == 2 and overrides == {"optim.lr": killed.params["optim.lr"]}
    assert sweep.claim(study, cfg, dims)[0].number == 3  # 1 complete + 1 running < 3 trials
    assert sweep.claim(study, cfg, dims) is None  # 1 complete + 2 running (live pids): never overshoots
    assert sweep.tally(study)["running"] == 2 and sweep.recover_dead(study) == []


def test_best_trial_breaks_ties_on_val_loss() -> None:
    import optuna

    study = optuna.create_study(direction="maximize")
    for value, loss in ((0.99, 0.05), (1.0, 0.08), (1.0, 0.03), (1.0, 0.06)):
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs={"val_loss": loss, "overrides": {}}))
    best = sweep.best_summary(study, {"metric": "accuracy", "dir": "."})
    assert (best["trial"], best["value"], best["val_loss"]) == (2, 1.0, 0.03)


# ---------------------------------------------------------------- a real sweep, killed and resumed

SPACE = """\
optim.lr: {low: 1.0e-3, high: 1.0e-2, log: true}
model.kwargs.hidden: {choices: [16, 32]}
model.kwargs.channels: {choices: [[4, 8], [8, 16]]}
"""
TRIALS = 4


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Session 1 (1 worker) is SIGKILLed (its whole process group) in trial 1's first epoch, after trial 0
    completed; session 2, the same command with --jobs 2, finishes the sweep."""
    work = tmp_path_factory.mktemp("sweep")
    tiny = {f"{section}.{key}": value for section, values in TINY.items() for key, value in values.items()}
    tiny.update({"train.epochs": 3, "train.experiment": "dlops-sweep-test"})
    (work / "params.yaml").write_text(sweep.set_yaml_values(PARAMS.read_text(), tiny))  # comments and all
    (work / "space.yaml").write_text(SPACE)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
           "DLOPS_FAILPOINT": "sweep.trial1.epoch"}
    cmd = [sys.executable, "-m", "pipelines.sweep", "--space", "space.yaml", "--params", "params.yaml",
           "--dir", "sweep", "--trials", str(TRIALS)]
    # its own process group: the failpoint SIGKILLs the sweep and its workers together (kill -9 -<pgid>)
    first = subprocess.run([*cmd, "--jobs", "1"], cwd=work, env=env, capture_output=True, text=True, timeout=400,
                           start_new_session=True)
    storage = f"sqlite:///{work / 'sweep' / 'optuna.db'}"
    import optuna

    after_kill = [(t.number, t.state.name, t.params) for t in optuna.load_study(study_name="space", storage=storage).trials]
    env.pop("DLOPS_FAILPOINT")
    second = subprocess.run([*cmd, "--jobs", "2"], cwd=work, env=env, capture_output=True, text=True, timeout=400,
                            start_new_session=True)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return {"work": work, "first": first, "second": second, "after_kill": after_kill, "storage": storage,
            "study": optuna.load_study(study_name="space", storage=storage)}


def mlflow_runs(work: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("dlops-sweep-test")
    return client, client.search_runs([exp.experiment_id], max_results=100)


@pytest.mark.slow
def test_killed_trial_is_failed_and_redone_once(killed_and_resumed: dict) -> None:
    from optuna.trial import TrialState

    assert killed_and_resumed["first"].returncode == -signal.SIGKILL
    states = [s for _, s, _ in killed_and_resumed["after_kill"]]
    assert states == ["COMPLETE", "RUNNING"]  # killed mid-trial 1
    trials = killed_and_resumed["study"].trials
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == TRIALS  # --trials counts completed + pruned trials in total
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [1]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    redone = [t for t in finished if t.user_attrs.get("retry_of") == 1]
    assert len(redone) == 1 and redone[0].params == trials[1].params
    assert [t.params for t in finished].count(trials[1].params) == 1


@pytest.mark.slow
def test_resumed_session_ran_two_workers_in_parallel(killed_and_resumed: dict) -> None:
    later = [t for t in killed_and_resumed["study"].trials if t.number >= 2]
    assert len({t.user_attrs["pid"] for t in later}) == 2
    spans = sorted((t.datetime_start, t.datetime_complete) for t in later)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:]))  # two trials overlapped in time


@pytest.mark.slow
def test_trials_are_child_runs_of_one_parent(killed_and_resumed: dict) -> None:
    client, runs = mlflow_runs(killed_and_resumed["work"])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1 == TRIALS + 1
    killed = [r for r in children if r.data.tags["sweep.trial"] == "1"]
    assert [r.info.status for r in killed] == ["KILLED"]  # closed by the next train run (close_dead_runs)
    done = [r for r in children if r.info.status == "FINISHED"]
    assert sorted(int(r.data.tags["sweep.trial"]) for r in done) == [0, 2, 3, 4]  # each trial once
    for run in done:
        assert {"optim.lr", "model.hidden", "model.channels"} <= set(run.data.params)
        assert {"val_accuracy", "test_accuracy"} <= set(run.data.metrics)
    best = json.loads((killed_and_resumed["work"] / "sweep" / "best.json").read_text())
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(best["value"])
    assert parent.data.tags["best.run_id"] == best["run_id"]
    assert best["value"] == max(t.value for t in killed_and_resumed["study"].trials if t.value is not None
                                and t.state.name == "COMPLETE")
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/parallel_coordinate.png", "sweep/param_importances.png", "sweep/best.json"} <= logged
    for name in ("parallel_coordinate.png", "param_importances.png", "trials.csv", "sweep.json"):
        assert (killed_and_resumed["work"] / "sweep" / name).stat().st_size > 0


@pytest.mark.slow
def test_apply_writes_the_best_params_into_params_yaml(killed_and_resumed: dict, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(signal, "signal", lambda *args: None)
    work = killed_and_resumed["work"]
    target = tmp_path / "params.yaml"
    before = (work / "params.yaml").read_text()
    target.write_text(before)
    sweep.main(["--apply", str(work / "sweep"), "--params", str(target)])
    assert "trial" in capsys.readouterr().out
    best = json.loads((work / "sweep" / "best.json").read_text())["params"]
    params = load_params(target)
    assert params.optim.lr == best["optim.lr"]
    assert params.model.kwargs["hidden"] == best["model.kwargs.hidden"]
    assert params.model.kwargs["channels"] == best["model.kwargs.channels"]
    after = target.read_text().splitlines()
    assert len(after) == len(before.splitlines())  # in place: the three lines of the swept keys changed
    assert 1 <= sum(a != b for a, b in zip(before.splitlines(), after)) <= 3
    comments = [line.split("#", 1)[1] for line in before.splitlines() if "#" in line]
    assert [line.split("#", 1)[1] for line in after if "#" in line] == comments
