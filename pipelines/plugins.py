"""Modalities and tasks: the plug-ins that the seven generic steps ask.

A **modality** is the input side, one kind of data (``image``: fixed-shape arrays such as the 8x8
digits; ``tabular``; ``text``). It owns reading and validating raw data, the profile, the
preprocessing fitted on the train split, the model-input arrays, data facts for the architecture,
the baselines' inputs, the export of its preprocessing with the network (and the parity cases that
check it), the request schema and the one raw-request -> model-input function the service shares
with training, and error analysis.

A **task** is the output side, one kind of learning (``classification``, ``regression``; without a
predictor: ``anomaly`` and ``embedding`` on an autoencoder, ``generation`` on a GAN). It owns the
targets (encoding, strata, scaling; optional for anomaly/embedding), which architectures it trains
(``model_kind``), the train rows, the LightningModule (asked of the network, never imported: every
stage loads the tasks, only the training stages depend on ``models/``), the training loss and
metrics, what evaluate runs (``head``/``prepare``/``outputs``), scoring with a decision rule (the same
for the network and every baseline), the primary metric, plots, the export (head and graph), the
service's route (``POST /predict``, ``/score``, ``/embed``, ``/generate``) and its request side when
requests are not the modality's data, and how parity is compared.

Steps never branch on a modality's or a task's name: collect asks ``modality_for(params.data)``;
every later step reads ``kind`` and ``task`` from the files upstream and asks ``get_modality`` /
``get_task``. A new kind of data or learning is one module (or package) with a registered class:

    @register_modality
    class Signals(ArrayModality):
        name = "signal"
        ...

Built-in plug-ins are listed in ``MODALITY_MODULES`` / ``TASK_MODULES`` and imported on first
lookup, so importing this module stays cheap (the service imports it). Lookups fail like the model
registry does: ``unknown modality 'x' (valid: ...)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

if TYPE_CHECKING:
    from pipelines.params import DataParams, EvaluateParams, OptimParams, Params

MODALITY_MODULES = ("pipelines.modalities.image.plugin", "pipelines.modalities.tabular.plugin",
                    "pipelines.modalities.text.plugin")
TASK_MODULES = ("pipelines.tasks.classification", "pipelines.tasks.regression", "pipelines.tasks.anomaly",
                "pipelines.tasks.embedding", "pipelines.tasks.generation")

SPLITS = ("train", "val", "test")
ONNX_OPSET = 20  # every exported graph (network, fitted preprocessing): composed graphs must agree


class PluginError(ValueError):
    """Unknown modality or task, or a plug-in that does not fit the data."""


# ---------------------------------------------------------------- what plug-ins hand to the steps


@dataclass
class Loaded:
    """A collected dataset as split needs it.

    ``data`` is the modality's own (arrays, a data frame, texts), one row per target; ``targets``
    the raw target values in row order (the task encodes them); ``keys`` one row of bytes per data
    row (a content digest) for the cross-split duplicate check and the split hashes.
    """

    data: Any
    targets: Any
    keys: np.ndarray
    where: str


@dataclass
class Fitted:
    """What a modality's ``fit`` returns: its JSON state (preprocess.json), the model-input arrays of
    every row (encoded with the train-fitted state), per-row extras saved beside them, and facts
    for split.json (``input_shape`` at least). ``X`` None: the modality wrote each split's inputs
    into ``out`` itself (data larger than memory) and reads them back in ``saved_inputs``."""

    state: dict[str, Any]
    X: np.ndarray | None
    summary: dict[str, Any]
    extras: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class ParityCase:
    """One comparison of the exported graph with PyTorch: graph inputs (all rows) and the torch
    output on the same rows; ``tag`` says what the case covers (e.g. a sequence length)."""

    feeds: dict[str, np.ndarray]
    reference: np.ndarray
    tag: dict[str, Any] = field(default_factory=dict)


@dataclass
class Exported:
    """``model.onnx`` written by a modality: its input contract for the manifest, extra files that
    ship with it (names in the output dir), the parity cases, export facts, and a signature example
    (graph inputs as MLflow's ``infer_signature`` takes them)."""

    input_schema: dict[str, Any]
    cases: list[ParityCase]
    info: dict[str, Any]
    example: Any
    files: list[str] = field(default_factory=list)


# Train exports the graph (torch and the trained network are loaded there) into this folder of its
# outputs; deploy checks and ships it with ONNX Runtime + numpy only (no torch import: ~2 s, and the
# dynamo exporter's first call in a process: ~3 s).
EXPORT_DIR = "export"
TRAIN_OUTPUTS = "outputs.npz"  # the head's raw outputs per scored split (Task.outputs_in_train), for evaluate
EXPORT_FACTS = "export.json"
PARITY_CASES = "parity_cases.npz"  # each case's graph inputs and PyTorch's outputs on them
SIGNATURE_TABLE = "signature_example.parquet"  # a table's 2-row signature example (keeps its dtypes)


def save_exported(exported: Exported, out: Path) -> None:
    """Write what deploy needs of ``exported`` beside ``out/model.onnx``: the parity cases (string
    inputs as fixed-width unicode: no pickled objects), the signature example and the facts."""
    import pandas as pd

    from pipelines.files import save_arrays, write_json

    arrays: dict[str, np.ndarray] = {}
    cases = []
    for i, case in enumerate(exported.cases):
        names = list(case.feeds)
        for j, name in enumerate(names):
            v = case.feeds[name]
            arrays[f"c{i}_f{j}"] = v.astype(str) if v.dtype == object else v
        arrays[f"c{i}_ref"] = case.reference
        cases.append({"feeds": names, "tag": case.tag})
    example = exported.example
    if isinstance(example, pd.DataFrame):
        example.to_parquet(out / SIGNATURE_TABLE, index=False)
        kind, names = "table", None
    elif isinstance(example, dict):
        names = list(example)
        arrays.update({f"ex_{j}": np.asarray(example[n]) for j, n in enumerate(names)})
        kind = "feeds"
    else:
        arrays["ex"], kind, names = np.asarray(example), "array", None
    save_arrays(out / PARITY_CASES, **arrays)
    write_json(out / EXPORT_FACTS, {"input_schema": exported.input_schema, "info": exported.info,
                                    "files": exported.files, "cases": cases,
                                    "example": {"kind": kind, "names": names}})


def load_exported(folder: Path) -> Exported:
    """The ``Exported`` that ``save_exported`` wrote into ``folder`` (numpy + pandas, no torch)."""
    import pandas as pd

    from pipelines.files import load_arrays, read_json

    facts = read_json(folder / EXPORT_FACTS)
    arrays = load_arrays(folder / PARITY_CASES)

    def feed(key: str) -> np.ndarray:
        v = arrays[key]
        return v.astype(object) if v.dtype.kind == "U" else v  # ONNX string inputs, as the service feeds them

    cases = [ParityCase({n: feed(f"c{i}_f{j}") for j, n in enumerate(c["feeds"])}, arrays[f"c{i}_ref"], c["tag"])
             for i, c in enumerate(facts["cases"])]
    ex = facts["example"]
    example = (pd.read_parquet(folder / SIGNATURE_TABLE) if ex["kind"] == "table"
               else {n: arrays[f"ex_{j}"] for j, n in enumerate(ex["names"])} if ex["kind"] == "feeds"
               else arrays["ex"])
    return Exported(input_schema=facts["input_schema"], cases=cases, info=facts["info"], example=example,
                    files=list(facts["files"]))


# ---------------------------------------------------------------- the protocols


class Modality:
    """Base class of the input side. Subclasses set ``name`` (the ``kind`` written to every
    artifact) and ``request_side`` (what the service speaks for it), and implement the methods that
    raise ``NotImplementedError`` here."""

    name: ClassVar[str]
    # the request side in the service (``module:Class``, a ``pipelines.modalities.schema.RequestSide``;
    # light imports only: the service loads it), or None: no service for this modality yet
    request_side: ClassVar[str | None] = None

    def claims(self, data: DataParams) -> bool:
        """True when ``data`` (its source, and e.g. ``data.text``) is this modality's."""
        raise NotImplementedError

    # collect
    def collect(self, params: Params, out: Path) -> dict[str, Any]:
        """Read, validate and write the dataset into ``out``; return the profile, which must hold
        ``task`` (resolved, never ``auto``), ``rows``, ``data_hash``, ``source`` and the task's
        ``target_profile``. The step adds ``kind``."""
        raise NotImplementedError

    # split
    def load(self, collect_dir: Path, profile: dict[str, Any]) -> Loaded:
        raise NotImplementedError

    def fit(self, params: Params, loaded: Loaded, parts: dict[str, np.ndarray], profile: dict[str, Any],
            out: Path) -> Fitted:
        """Fit preprocessing on ``loaded`` rows ``parts["train"]`` only, write its files into
        ``out`` (and anything later steps need, e.g. raw test rows), encode every row."""
        raise NotImplementedError

    # design, train, evaluate
    def saved_inputs(self, split_dir: Path, name: str, state: dict[str, Any]) -> np.ndarray:
        """One split's inputs as ``fit`` saved them (default: ``X`` of ``<name>.npz``). A modality whose
        ``Fitted.X`` is None saves its own files and returns an array-like here (e.g. a memmap)."""
        from pipelines.files import load_arrays

        return load_arrays(Path(split_dir) / f"{name}.npz", "X")["X"]

    def model_inputs(self, X: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        """Saved split arrays -> what the network is trained on (default: as saved). May return an
        array-like that computes rows when sliced (``len``, ``shape``, ``dtype``, ``X[a:b]``)."""
        return X

    def dataset(self, split_dir: Path, name: str, state: dict[str, Any], targets: Any) -> Any:
        """The torch ``Dataset`` of one split for training: ``(input, target)`` items (default: the
        model inputs in memory, a ``TensorDataset``; a modality with data larger than memory streams)."""
        import torch
        from torch.utils.data import TensorDataset

        X = self.model_inputs(self.saved_inputs(split_dir, name, state), state)
        return TensorDataset(torch.from_numpy(np.asarray(X)), targets)

    def augments_by_default(self, state: dict[str, Any]) -> bool:
        """Whether ``train.augment: auto`` turns ``augmenter`` on for this data (default: off)."""
        return False

    def data_args(self, state: dict[str, Any]) -> dict[str, Any]:
        """Facts about the data the architecture may take (``models.registry.DATA_ARGS``)."""
        return {}

    def augmenter(self, state: dict[str, Any]) -> Callable[[Any], Any] | None:
        """A train-time batch transform for ``train.augment: true`` (None: not supported)."""
        return None

    def baselines(self, task: Task, split_dir: Path, state: dict[str, Any]) -> dict[str, Callable[[], Any]]:
        """Baseline name -> factory of an unfitted scikit-learn estimator over ``baseline_inputs``."""
        return {}

    def baseline_inputs(self, split_dir: Path, state: dict[str, Any]) -> dict[str, Any]:
        """Per split, what the baselines are fitted on / score (default: the flattened model inputs)."""
        out = {}
        for name in SPLITS:
            X = np.asarray(self.model_inputs(self.saved_inputs(split_dir, name, state), state))
            out[name] = X.reshape(len(X), -1)
        return out

    def error_analysis(self, split_dir: Path, worst: list[dict[str, Any]]) -> dict[str, list[tuple]]:
        """Plot/table files (name -> CSV rows) about the test rows the model got most wrong (``worst``
        from the task: ``row``, ``actual``, ``predicted``, ``score``); default: none."""
        return {}

    def error_plots(self, split_dir: Path, worst: list[dict[str, Any]], plots: Path) -> list[str]:
        """Image files (e.g. a PNG grid of those ``worst`` test rows) written into ``plots``; their
        names. Default: none."""
        return []

    # export (run by train, where torch and the weights are loaded; deploy checks and ships the graph)
    def export(self, head: Any, split_dir: Path, state: dict[str, Any], split: dict[str, Any], out: Path,
               output_name: str) -> Exported:
        """Write ``out/model.onnx``: the network ``head`` behind this modality's preprocessing."""
        raise NotImplementedError


def predict_outputs(net: Any, X: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """The network's raw outputs on model inputs ``X``, in batches, without gradients."""
    import torch

    with torch.no_grad():
        return np.concatenate([net(torch.from_numpy(X[i:i + batch_size])).numpy() for i in range(0, len(X), batch_size)])


class Task:
    """Base class of the output side; subclasses set ``name``, ``output_name`` and implement the
    methods below. A task is built with the run's params (``get_task(name, params)``) and reads its
    own section there (e.g. ``params.anomaly``); the service builds it without params (defaults).

    Supervised tasks (classification, regression) train a *predictor* on ``(input, target)`` and answer
    ``POST /predict``. Other kinds of learning override the hooks marked "kind of learning": the
    architectures they take (``model_kind``: ``autoencoder``, ``gan``), the LightningModule, what the
    training step minimises, what the network answers in evaluate and once served (``head``), the route
    and, where the request is not the modality's data at all (generation), the request side and export.
    """

    name: ClassVar[str]
    output_name: ClassVar[str]
    losses: ClassVar[tuple[str, ...]]
    default_loss: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]  # evaluate.metric choices (all: higher is better)
    compares_labels: ClassVar[bool] = False  # parity: predicted labels must agree too
    # kind of learning
    model_kind: ClassVar[str] = "predictor"  # the architectures' ``kind`` (models/registry.py) this task trains
    target_kind: ClassVar[str] = "labels"  # how a table's target column is read: labels (text) or numbers
    needs_labels: ClassVar[bool] = True  # False: the target is optional (used to score only)
    route: ClassVar[str] = "predict"  # the service's POST /<route>
    request_side: ClassVar[str | None] = None  # ``module:Class``: requests are not the modality's data
    monitor: ClassVar[str | None] = "val_loss"  # early stopping + best checkpoint; None: keep the last epoch
    scored_splits: ClassVar[tuple[str, ...]] = ("val", "test")  # splits evaluate computes outputs of
    # the head's outputs on ``scored_splits`` depend on the trained weights alone: train writes them
    # (outputs.npz) and evaluate scores them without loading torch. False: evaluate runs the network
    # itself (``prepare`` needs the head, or ``outputs`` is not the head's answer, e.g. drawn samples)
    outputs_in_train: ClassVar[bool] = True

    def __init__(self, params: Params | None = None) -> None:
        self.params = params  # None: built for its facts or to answer requests (the service)

    def section(self, name: str) -> Any:
        """The params section ``name`` this run was given (e.g. ``anomaly``)."""
        if self.params is None:
            raise RuntimeError(f"the {self.name} task was built without params; it needs params.{name} here")
        return getattr(self.params, name)

    # collect / split
    def target_profile(self, values: Any) -> dict[str, Any]:
        raise NotImplementedError

    def encode_targets(self, values: Any, profile: dict[str, Any], where: str) -> np.ndarray:
        raise NotImplementedError

    def strata(self, y: np.ndarray) -> tuple[np.ndarray, str]:
        """Labels to stratify the split on, and what they are."""
        raise NotImplementedError

    def fit_targets(self, y_train: np.ndarray) -> dict[str, Any]:
        """Target state fitted on train (e.g. a scaler), stored in preprocess.json under ``target``."""
        return {}

    def split_summary(self, y: np.ndarray, parts: dict[str, np.ndarray], profile: dict[str, Any]) -> dict[str, Any]:
        return {}

    # design / configure / train
    def num_outputs(self, split: dict[str, Any]) -> int:
        raise NotImplementedError

    def dry_run(self, net: Any, batch: Any, split: dict[str, Any]) -> dict[str, Any]:
        """Run ``net`` on a batch of two train inputs; raise ``ValueError`` if its outputs do not fit the
        task; return the spec's ``output`` block (name, shape, dtype) and dry-run facts."""
        import torch

        num_outputs = self.num_outputs(split)
        with torch.no_grad():
            out = net(batch)
        if tuple(out.shape) != (len(batch), num_outputs):
            raise ValueError(f"dry run produced {tuple(out.shape)}, expected {(len(batch), num_outputs)}")
        return {"output": {"name": self.output_name, "shape": [-1, num_outputs], "dtype": "float32"},
                "dry_run": {"batch": len(batch), "output_shape": list(out.shape),
                            "finite": bool(torch.isfinite(out).all())}}

    def choose_loss(self, p: OptimParams, y_train: np.ndarray, num_outputs: int) -> dict[str, Any]:
        raise NotImplementedError

    def train_targets(self, y: np.ndarray, target_state: dict[str, Any]) -> Any:
        """Split targets -> the tensor the loss takes."""
        raise NotImplementedError

    def train_rows(self, y: np.ndarray) -> np.ndarray | None:
        """The train rows the network (and every baseline) learns from; None: all of them."""
        return None

    def module(self, net: Any, recipe: dict[str, Any], epochs: int, augment: Any, split_dir: Path) -> Any:
        """The LightningModule that trains ``net``; None (the default): ``models.lit.LitModel`` with this
        task's ``training_loss``. A task never imports ``models/`` itself (every stage loads the task
        plug-ins; only the stages that need models depend on them): it asks the network, e.g.
        ``net.training_module(...)``."""
        return None

    def training_loss(self, net: Any, x: Any, y: Any, loss_fn: Any, stage: str) -> tuple[Any, dict[str, Any]]:
        """The loss of one batch and per-batch metrics (name -> tensor, logged as ``<stage>_<name>``);
        by default ``step`` on the network's outputs."""
        return self.step(net(x), y, loss_fn)

    def step(self, out: Any, y: Any, loss_fn: Any) -> tuple[Any, dict[str, Any]]:
        """Loss and per-batch metrics (name -> tensor, logged as ``<stage>_<name>``)."""
        raise NotImplementedError

    # evaluate
    def head(self, net: Any, target_state: dict[str, Any]) -> Any:
        """What the network answers in evaluate and once served (default: the network itself; an
        anomaly task answers reconstruction errors, an embedding task latent vectors)."""
        return net

    def prepare(self, head: Any, split_dir: Path, state: dict[str, Any], split: dict[str, Any],
                create_model: Callable[..., Any]) -> None:
        """Called once by evaluate before any scoring, with the network's ``head`` (e.g. to read the latent
        size the baselines match; None when ``outputs_in_train``: train scored it) and the model
        registry's ``create_model`` (e.g. to train a judge)."""

    def outputs(self, head: Any, inputs: Callable[[str], np.ndarray], name: str,
                state: dict[str, Any]) -> dict[str, np.ndarray]:
        """What evaluate scores for split ``name``: by default ``network_outputs`` of ``head`` run on the
        split's model inputs, ``inputs(name)`` (a generation task draws samples instead)."""
        return self.network_outputs(predict_outputs(head, inputs(name)), state["target"])

    def network_outputs(self, raw: np.ndarray, target_state: dict[str, Any]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def estimator_outputs(self, estimator: Any, X: Any) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def score(self, y: dict[str, np.ndarray], out: dict[str, dict[str, np.ndarray]],
              p: EvaluateParams) -> tuple[dict[str, Any], dict[str, Any]]:
        """Test metrics of one model under its own decision rule (fitted on ``scored_splits`` other than
        test the same way for every model), and that rule (``{"value": threshold}``, centroids, or ``{}``).
        ``y`` and ``out`` are keyed by split."""
        raise NotImplementedError

    def baseline_inputs(self, modality: Modality, split_dir: Path, state: dict[str, Any]) -> dict[str, Any]:
        """Per split, what the baselines fit on / score (default: the modality's ``baseline_inputs``)."""
        return modality.baseline_inputs(split_dir, state)

    def primary_metric(self, requested: str, split: dict[str, Any]) -> tuple[str, str]:
        """The metric that decides (verdict, gate, champion) and why."""
        raise NotImplementedError

    def baseline_factories(self, categorical: list[int]) -> dict[str, Callable[[], Any]]:
        """Name -> unfitted estimator over flat feature arrays (``categorical``: column indices)."""
        raise NotImplementedError

    def verdict_note(self, metrics: dict[str, Any]) -> str | None:
        """What the verdict should add beyond the primary metric (e.g. a metric where a baseline wins)."""
        return None

    def report(self, y: np.ndarray, test: dict[str, np.ndarray], rule: dict[str, Any], split: dict[str, Any],
               plots: Path) -> tuple[dict[str, Any], dict[str, list[tuple]]]:
        """A JSON report and CSV plot files (name -> rows); PNGs are written into ``plots``."""
        raise NotImplementedError

    def worst(self, y: np.ndarray, test: dict[str, np.ndarray], rule: dict[str, Any], split: dict[str, Any],
              top: int = 25) -> list[dict[str, Any]]:
        """The test rows the model got most wrong, most confident first."""
        return []

    # export (train) and deploy
    def export_head(self, net: Any, target_state: dict[str, Any]) -> Any:
        """The network as it should answer once served (e.g. in the target's own units)."""
        return net

    def export(self, modality: Modality, head: Any, split_dir: Path, state: dict[str, Any], split: dict[str, Any],
               out: Path) -> Exported:
        """Write ``out/model.onnx`` (default: the modality's preprocessing in front of ``head``)."""
        return modality.export(head, split_dir, state, split, out, self.output_name)

    def output_spec(self, split: dict[str, Any], rule: dict[str, Any]) -> dict[str, Any]:
        """The manifest's ``output`` block."""
        return {"name": self.output_name, "shape": [-1, self.num_outputs(split)], "dtype": "float32"}

    def parity_scale(self, target_state: dict[str, Any]) -> float:
        return 1.0

    # serve (numpy only: the service calls these)
    def prediction_fields(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """The fields of one prediction in the response: name -> (type, pydantic Field)."""
        raise NotImplementedError

    def response_fields(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Request-level response fields besides the model identity: name -> (type, pydantic Field)."""
        return {}

    def respond(self, outputs: np.ndarray, manifest: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The graph's ``output_name`` values for a batch -> one dict per row, and the request-level fields."""
        raise NotImplementedError


# ---------------------------------------------------------------- registries

_MODALITIES: dict[str, type[Modality]] = {}
_TASKS: dict[str, type[Task]] = {}
_loaded = False

M = TypeVar("M", bound=type)


def _register(registry: dict[str, Any], what: str) -> Callable[[M], M]:
    def deco(cls: M) -> M:
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{cls.__name__}: a {what} needs a class attribute 'name'")
        if registry.get(name) not in (None, cls):
            raise ValueError(f"{what} {name!r} registered twice ({registry[name].__name__}, {cls.__name__})")
        registry[name] = cls
        return cls

    return deco


register_modality = _register(_MODALITIES, "modality")
register_task = _register(_TASKS, "task")


def unregister(name: str) -> None:
    """Forget a modality or task (tests that register their own clean up with this)."""
    _MODALITIES.pop(name, None)
    _TASKS.pop(name, None)


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        for module in (*MODALITY_MODULES, *TASK_MODULES):
            importlib.import_module(module)
        _loaded = True


def list_modalities() -> list[str]:
    _load_builtins()
    return sorted(_MODALITIES)


def list_tasks() -> list[str]:
    _load_builtins()
    return sorted(_TASKS)


def get_modality(name: str) -> Modality:
    _load_builtins()
    try:
        return _MODALITIES[name]()
    except KeyError:
        raise PluginError(f"unknown modality {name!r} (valid: {', '.join(sorted(_MODALITIES))})") from None


def get_task(name: str, params: Params | None = None) -> Task:
    """The task ``name``, reading its own params section in ``params`` (defaults when None)."""
    _load_builtins()
    try:
        cls = _TASKS[name]
    except KeyError:
        raise PluginError(f"unknown task {name!r} (valid: {', '.join(sorted(_TASKS))})") from None
    return cls(params)


def modality_for(data: DataParams) -> Modality:
    """The modality whose ``claims`` accepts ``data``; a ``ParamsError`` naming ``data.source`` if none."""
    from pipelines.files import ParamsError
    from pipelines.sources import list_sources, unknown_source_hint

    _load_builtins()
    for cls in _MODALITIES.values():
        modality = cls()
        if modality.claims(data):
            return modality
    raise ParamsError(f"data.source: unknown source {data.source!r} (valid: {', '.join(list_sources())})"
                      + unknown_source_hint(data.source))
