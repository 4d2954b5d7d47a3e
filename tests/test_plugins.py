"""The plug-in contract: a new modality is one class (and a data source) registered from anywhere.

``Signals`` below is a complete modality for 1-D signals (noisy sine / square / sawtooth waves of
32 samples), written in this file alone: its own data source, collect (``data.npz`` + profile),
per-position standardisation fitted on train, baselines, and an ONNX export with the
standardisation baked in. It runs through all seven steps unchanged, once with the built-in ``mlp``
and once with an architecture registered here too (``signal_conv1d``). ``Amplitude`` is a new task
(each signal's amplitude, scored by negated MAE), also defined here alone, run through all seven
steps on the same signals. Registrations live only as
long as the ``signals`` fixture: registries are process-global and other modules list them.

Also here: registry errors, and static checks that the generic steps never branch on a modality's
or a task's name.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from pipelines.files import load_arrays, read_json, save_arrays, sha256_arrays
from pipelines.params import DataParams, Params, ParamsError, section_dict
from pipelines.plugins import (Exported, Fitted, Loaded, Modality, ParityCase, PluginError, Task, get_modality,
                               get_task, list_modalities, list_tasks, modality_for, register_modality, register_task,
                               unregister)
from pipelines.sources import Dataset, load_source, register_source, source_name, validate_dataset
from tests.conftest import ROOT, make_params, run_pipeline

SOURCE = "toy:signals"
AMPLITUDE_SOURCE = "toy:signal_amplitudes"  # the same signals, labelled with their amplitude
LENGTH = 32
SHAPES = ("sawtooth", "sine", "square")
CONV_ARCH = "signal_conv1d"


# ---------------------------------------------------------------- the new modality, in this file alone


def make_signals(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` float32 signals ``[n, LENGTH]`` (about two cycles, jittered frequency and phase, random
    amplitude and offset, noise), their shape names and amplitudes; classes are balanced, the seed
    fixes all."""
    rng = np.random.default_rng(seed)
    t = np.arange(LENGTH) / LENGTH
    labels = np.asarray(SHAPES)[np.arange(n) % len(SHAPES)]
    cycles = rng.uniform(1.8, 2.2, (n, 1)) * t + rng.uniform(0, 0.1, (n, 1))  # phase in cycles
    waves = {"sine": np.sin(2 * np.pi * cycles), "square": np.sign(np.sin(2 * np.pi * cycles)),
             "sawtooth": 2 * (cycles % 1.0) - 1}
    clean = np.select([labels[:, None] == s for s in SHAPES], [waves[s] for s in SHAPES])
    amplitude = rng.uniform(0.5, 2.0, (n, 1))
    X = amplitude * clean + rng.normal(0, 0.3, (n, 1)) + rng.normal(0, 0.15, (n, LENGTH))
    return X.astype(np.float32), labels, amplitude[:, 0]


def signals_source(params: DataParams) -> Dataset:
    """The toy source: a ``Dataset`` like the bundled digits (labels 0..K-1, class names)."""
    X, labels, _ = make_signals()
    return Dataset(X=X, y=np.searchsorted(SHAPES, labels).astype(np.int64), kind="signal",  # type: ignore[arg-type]
                   origin=SOURCE, class_names=SHAPES)


def amplitudes_source(params: DataParams) -> Dataset:
    X, _, amplitude = make_signals()
    return Dataset(X=X, y=amplitude, kind="signal", origin=AMPLITUDE_SOURCE)  # type: ignore[arg-type]


class Standardized(nn.Module):
    """The served graph: raw signal in, per-position standardisation, then the network."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.mean) / self.std)


class Signals(Modality):
    """1-D signals of a fixed length: ``X`` float32 ``[N, LENGTH]`` as collected."""

    name = "signal"

    def claims(self, data: DataParams) -> bool:
        return not data.text and source_name(data.source) in (SOURCE, AMPLITUDE_SOURCE)

    def collect(self, params: Params, out: Path) -> dict[str, Any]:
        ds = load_source(params.data)
        # the source knows its task: shapes are classes, amplitudes the test file's own task
        task = get_task(Amplitude.name if ds.origin == AMPLITUDE_SOURCE else "classification")
        targets = np.asarray(ds.class_names)[ds.y] if ds.class_names else ds.y
        # validate_dataset knows the built-in task names only: float targets are checked as regression's
        checks = validate_dataset(ds, "regression" if ds.origin == AMPLITUDE_SOURCE else task.name)
        save_arrays(out / "data.npz", X=ds.X, y=targets)
        return {"source": ds.origin, "task": task.name, "rows": int(len(ds.X)),
                "data_hash": sha256_arrays(ds.X, ds.y), "checks_passed": checks,
                "params": section_dict(params.data), **task.target_profile(targets)}

    def load(self, collect_dir: Path, profile: dict[str, Any]) -> Loaded:
        data = load_arrays(collect_dir / "data.npz", "X", "y")
        return Loaded(data=data["X"], targets=data["y"], keys=data["X"], where=str(collect_dir / "data.npz"))

    def fit(self, params: Params, loaded: Loaded, parts: dict[str, np.ndarray], profile: dict[str, Any],
            out: Path) -> Fitted:
        train = loaded.data[parts["train"]]
        state = {"kind": "standardize_positions", "mean": train.mean(0).tolist(),
                 "std": np.where(train.std(0) > 0, train.std(0), 1.0).tolist()}
        return Fitted(state=state, X=loaded.data, summary={"input_shape": [LENGTH]})

    def model_inputs(self, X: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        mean, std = np.asarray(state["mean"], np.float32), np.asarray(state["std"], np.float32)
        return (X.astype(np.float32) - mean) / std

    def baselines(self, task: Task, split_dir: Path, state: dict[str, Any]) -> dict[str, Any]:
        return task.baseline_factories([])

    def export(self, head: Any, split_dir: Path, state: dict[str, Any], split: dict[str, Any], out: Path,
               output_name: str) -> Exported:
        from pipelines.export import INPUT_NAME, export_onnx

        model = Standardized(head, state["mean"], state["std"]).eval()
        raw = np.ascontiguousarray(load_arrays(split_dir / "test.npz", "X")["X"], dtype=np.float32)
        info = export_onnx(model, [LENGTH], out / "model.onnx", output_name=output_name)
        with torch.no_grad():
            reference = model(torch.from_numpy(raw)).numpy()
        return Exported(input_schema={"name": INPUT_NAME, "shape": [-1, LENGTH], "dtype": "float32"},
                        cases=[ParityCase({INPUT_NAME: raw}, reference)], info=info, example=raw[:2])


class Amplitude(Task):
    """A new task, in this file alone: each signal's amplitude (one positive number), scored by
    negated mean absolute error (higher is better, as every primary metric is)."""

    name = "amplitude"
    output_name = "amplitude"
    losses = ("mse",)
    default_loss = "mse"
    metrics = ("neg_mae",)

    def target_profile(self, values: Any) -> dict[str, Any]:
        y = np.asarray(values, dtype=np.float64)
        return {"amplitude_range": [float(y.min()), float(y.max())]}

    def encode_targets(self, values: Any, profile: dict[str, Any], where: str) -> np.ndarray:
        return np.asarray(values, dtype=np.float32)

    def strata(self, y: np.ndarray) -> tuple[np.ndarray, str]:
        return np.digitize(y, np.quantile(y, [0.25, 0.5, 0.75])), "amplitude quartiles"

    def num_outputs(self, split: dict[str, Any]) -> int:
        return 1

    def choose_loss(self, p: Any, y_train: np.ndarray, num_outputs: int) -> dict[str, Any]:
        return {"name": "mse", "class_weights": None, "why": "amplitudes are O(1): plain squared error"}

    def train_targets(self, y: np.ndarray, target_state: dict[str, Any]) -> Any:
        return torch.as_tensor(y, dtype=torch.float32)

    def step(self, out: Any, y: Any, loss_fn: Any) -> tuple[Any, dict[str, Any]]:
        out = out.squeeze(-1)
        return loss_fn(out, y), {"mae": (out - y).abs().mean()}

    def network_outputs(self, raw: np.ndarray, target_state: dict[str, Any]) -> dict[str, np.ndarray]:
        return {"pred": raw[:, 0].astype(np.float64)}

    def estimator_outputs(self, estimator: Any, X: Any) -> dict[str, np.ndarray]:
        return {"pred": np.asarray(estimator.predict(X), dtype=np.float64)}

    def score(self, y: dict[str, np.ndarray], out: dict[str, dict[str, np.ndarray]],
              p: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"neg_mae": round(-float(np.abs(out["test"]["pred"] - y["test"]).mean()), 6)}, {}

    def primary_metric(self, requested: str, split: dict[str, Any]) -> tuple[str, str]:
        return "neg_mae", "the only metric of this task"

    def baseline_factories(self, categorical: list[int]) -> dict[str, Any]:
        from sklearn.linear_model import Ridge

        return {"linear": Ridge}

    def report(self, y: np.ndarray, test: dict[str, np.ndarray], rule: dict[str, Any], split: dict[str, Any],
               plots: Path) -> tuple[dict[str, Any], dict[str, list[tuple]]]:
        return {}, {"amplitudes.csv": [("actual", "predicted"), *zip(y.tolist(), test["pred"].tolist())]}


class SignalConv1d(nn.Module):
    """A tiny 1-D CNN over ``[LENGTH]`` inputs: an architecture registered outside ``models/``."""

    def __init__(self, input_shape: Sequence[int], num_outputs: int, channels: int = 8) -> None:
        super().__init__()
        if len(input_shape) != 1:
            raise ValueError(f"{CONV_ARCH} needs 1-D inputs (L,), got {tuple(input_shape)}")
        self.body = nn.Sequential(nn.Conv1d(1, channels, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(4),
                                  nn.Flatten(), nn.Linear(4 * channels, num_outputs))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x.unsqueeze(1))


@pytest.fixture()
def signals() -> Iterator[type[Signals]]:
    """``Signals``, its source and ``signal_conv1d`` registered for one test, then forgotten."""
    import models.registry as model_registry
    import pipelines.sources as sources

    register_source(SOURCE, modality=Signals.name)(signals_source)
    register_source(AMPLITUDE_SOURCE, modality=Signals.name)(amplitudes_source)
    register_modality(Signals)
    register_task(Amplitude)
    model_registry.register_model(CONV_ARCH)(SignalConv1d)
    try:
        yield Signals
    finally:
        unregister(Signals.name)
        unregister(Amplitude.name)
        sources.unregister_source(SOURCE)
        sources.unregister_source(AMPLITUDE_SOURCE)
        model_registry.unregister_model(CONV_ARCH)


# ---------------------------------------------------------------- all seven steps


@pytest.mark.parametrize("arch,kwargs", [("mlp", {"hidden": [64], "dropout": 0.0, "batchnorm": False}),
                                         (CONV_ARCH, {"channels": 8})], ids=["mlp", CONV_ARCH])
def test_new_modality_runs_all_seven_steps(signals: type[Signals], arch: str, kwargs: dict, tmp_path: Path,
                                           mlflow_uri: str) -> None:
    """collect -> deploy on the test-file modality: profile, baselines, parity and registry as for digits."""
    params = make_params(data={"source": SOURCE}, model={"name": arch, "kwargs": kwargs},
                         train={"epochs": 15, "batch_size": 32, "patience": 15},
                         evaluate={"baselines": ["logreg"], "min_score": 0.5},
                         deploy={"build_bento": False, "register": True, "model_name": f"signals-{arch}",
                                 "parity_batch_sizes": [1, 7]})
    out = run_pipeline(params, tmp_path)

    profile = read_json(tmp_path / "collect" / "profile.json")
    assert (profile["kind"], profile["task"], profile["rows"]) == ("signal", "classification", 300)
    assert profile["classes"] == list(SHAPES) and profile["imbalance_ratio"] == 1.0
    split = read_json(tmp_path / "split" / "split.json")
    assert split["kind"] == "signal" and split["input_shape"] == [LENGTH]
    assert read_json(tmp_path / "split" / "preprocess.json")["modality"] == "signal"
    assert read_json(tmp_path / "design" / "model_spec.json")["kind"] == "signal"

    metrics = read_json(tmp_path / "evaluate" / "metrics.json")
    assert metrics["primary_metric"]["name"] == "accuracy"  # balanced classes
    assert "logreg" in metrics["baselines"] and metrics["verdict"].startswith("the network")
    assert metrics["accuracy"] > 0.7, metrics  # chance is 1/3
    assert out["evaluate"]["gate"] is True

    parity = read_json(tmp_path / "deploy" / "parity.json")
    assert parity["passed"] and parity["max_abs_diff"] < 1e-4 and parity["label_agreement"] == 1.0
    assert [r["batch_size"] for r in parity["by_batch_size"]] == [1, 7]
    manifest = read_json(tmp_path / "deploy" / "manifest.json")
    assert (manifest["kind"], manifest["task"]) == ("signal", "classification")
    assert manifest["input"]["shape"] == [-1, LENGTH] and manifest["classes"] == list(SHAPES)
    assert manifest["version"] == "1" and manifest["alias"] == "champion"


def test_new_task_runs_all_seven_steps(signals: type[Signals], tmp_path: Path, mlflow_uri: str) -> None:
    """The test file's ``amplitude`` task: targets, loss, scoring, baseline and parity with no step change."""
    params = make_params(data={"source": AMPLITUDE_SOURCE}, model={"name": "mlp", "kwargs": {"hidden": [32]}},
                         train={"epochs": 15, "batch_size": 32, "patience": 15},
                         evaluate={"baselines": ["linear"], "min_score": -0.5},
                         deploy={"build_bento": False, "register": False, "model_name": "signal-amplitude",
                                 "parity_batch_sizes": [7]})
    run_pipeline(params, tmp_path)
    assert read_json(tmp_path / "collect" / "profile.json")["task"] == "amplitude"
    assert read_json(tmp_path / "split" / "split.json")["stratified_on"] == "amplitude quartiles"
    assert read_json(tmp_path / "configure" / "recipe.json")["loss"]["name"] == "mse"
    metrics = read_json(tmp_path / "evaluate" / "metrics.json")
    assert metrics["primary_metric"]["name"] == "neg_mae" and "linear" in metrics["baselines"]
    assert metrics["neg_mae"] > -0.5, metrics  # amplitudes span 0.5..2
    assert (tmp_path / "evaluate" / "plots" / "amplitudes.csv").exists()
    parity = read_json(tmp_path / "deploy" / "parity.json")
    assert parity["passed"] and parity["label_agreement"] is None  # no labels to agree on
    manifest = read_json(tmp_path / "deploy" / "manifest.json")
    assert (manifest["kind"], manifest["task"]) == ("signal", "amplitude")
    assert manifest["output"] == {"name": "amplitude", "shape": [-1, 1], "dtype": "float32"}


def test_served_graph_takes_raw_signals(signals: type[Signals], tmp_path: Path) -> None:
    """The export bakes the train-fitted standardisation in: raw test signals in, torch's logits out."""
    from pipelines import collect, split
    from pipelines.export import INPUT_NAME
    from serving.runtime import make_session

    params = make_params(data={"source": SOURCE})
    collect.run(params, tmp_path / "collect")
    split.run(params, tmp_path / "collect", tmp_path / "split")
    state = read_json(tmp_path / "split" / "preprocess.json")
    net = nn.Sequential(nn.Linear(LENGTH, 3)).eval()
    exported = Signals().export(net, tmp_path / "split", state, read_json(tmp_path / "split" / "split.json"),
                                tmp_path, "logits")
    raw = exported.cases[0].feeds[INPUT_NAME]
    onnx_out = make_session(tmp_path / "model.onnx").run(None, {INPUT_NAME: raw[:5]})[0]
    with torch.no_grad():
        expected = net(torch.from_numpy(Signals().model_inputs(raw[:5], state))).numpy()
    np.testing.assert_allclose(onnx_out, expected, atol=1e-5)


# ---------------------------------------------------------------- registry behaviour


def test_unknown_modality_and_task_name_the_valid_ones() -> None:
    with pytest.raises(PluginError, match=r"unknown modality 'signalz' \(valid: image, tabular, text\)"):
        get_modality("signalz")
    with pytest.raises(PluginError, match=r"unknown task 'ranking' \(valid: anomaly, classification, embedding, "
                                          r"generation, regression\)"):
        get_task("ranking")


def test_unknown_source_is_a_params_error_naming_data_source(tmp_path: Path) -> None:
    from pipelines import collect

    with pytest.raises(ParamsError, match=r"data\.source: unknown source 'toy:nothing' \(valid: .*sklearn:digits"):
        modality_for(DataParams(source="toy:nothing"))
    with pytest.raises(ParamsError, match=r"data\.source: unknown source 'toy:nothing'"):
        collect.run(make_params(data={"source": "toy:nothing"}), tmp_path / "collect")
    assert not (tmp_path / "collect").exists()


def test_registration_lifecycle(signals: type[Signals]) -> None:
    """Registered: listed, looked up, claims only its own source; twice with another class: refused."""
    assert "signal" in list_modalities()
    assert isinstance(get_modality("signal"), Signals)
    assert isinstance(modality_for(DataParams(source=SOURCE)), Signals)
    assert modality_for(DataParams()).name == "image"  # the built-ins keep their sources
    register_modality(Signals)  # the same class again: a no-op (re-imports are harmless)

    class Impostor(Modality):
        name = "signal"

    with pytest.raises(ValueError, match=r"modality 'signal' registered twice \(Signals, Impostor\)"):
        register_modality(Impostor)
    assert isinstance(get_modality("signal"), Signals)

    class Classification2(Task):
        name = "classification"

    with pytest.raises(ValueError, match="task 'classification' registered twice"):
        register_task(Classification2)
    assert type(get_task("classification")).__name__ == "Classification"

    class Nameless(Modality):
        pass

    with pytest.raises(TypeError, match="Nameless: a modality needs a class attribute 'name'"):
        register_modality(Nameless)

    unregister("signal")
    with pytest.raises(PluginError, match="unknown modality 'signal'"):
        get_modality("signal")
    assert "signal" not in list_modalities() and "amplitude" in list_tasks()


# ---------------------------------------------------------------- steps never branch on plug-in names

STEP_MODULES = ("collect", "split", "design", "configure", "train", "evaluate", "deploy", "flow")
BUILTIN_NAMES = {"image", "tabular", "text", "classification", "regression"}
NAME_COMPARISON = re.compile(
    r"""\b(task|kind|modality)(\.name)?\s*[!=]=       # task == ..., kind != ..., task.name == ...
      | \[\s*["'](task|kind|modality)["']\s*\]\s*[!=]=  # x["task"] == ...
      | \.get\(\s*["'](task|kind|modality)["']\s*\)\s*[!=]=  # x.get("kind") == ...
      | [!=]=\s*["'](image|tabular|text|classification|regression)["']  # ... == "text"
    """, re.VERBOSE)


def _step_source(name: str) -> str:
    return (ROOT / "pipelines" / f"{name}.py").read_text(encoding="utf-8")


@pytest.mark.parametrize("module", STEP_MODULES)
def test_step_does_not_compare_plugin_names(module: str) -> None:
    hits = [f"{module}.py:{i}: {line.strip()}" for i, line in enumerate(_step_source(module).splitlines(), 1)
            if NAME_COMPARISON.search(line)]
    assert not hits, "steps must ask the plug-in, not compare its name:\n" + "\n".join(hits)


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the Constant nodes that are module/class/function docstrings."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                ids.add(id(first.value))
    return ids


@pytest.mark.parametrize("module", STEP_MODULES)
def test_step_names_no_builtin_plugin(module: str) -> None:
    """No string literal that *is* a built-in modality/task name, nor one that names one as a word
    in code (f-string parts included); docstrings may talk about them."""
    tree = ast.parse(_step_source(module))
    skip = _docstrings(tree)
    word = re.compile(r"^\W*(" + "|".join(sorted(BUILTIN_NAMES)) + r")\W*$")
    hits = [f"{module}.py:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
            and (node.value in BUILTIN_NAMES or word.match(node.value))]
    assert not hits, "a step names a built-in plug-in:\n" + "\n".join(hits)


def test_static_checks_catch_what_they_claim_to() -> None:
    """The two checks above would flag the branching they exist to prevent."""
    for line in ('if task == "regression":', "if split['kind'] != 'text':", 'if task.name == x:',
                 'if prof.get("kind") == kind:', 'x = y == "tabular"'):
        assert NAME_COMPARISON.search(line), line
    assert not NAME_COMPARISON.search('if path.name != "parity.json":')
    tree = ast.parse('"""Docstring naming image and text."""\nx = "classification"\n')
    skip = _docstrings(tree)
    found = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and id(n) not in skip]
    assert found == ["classification"]
