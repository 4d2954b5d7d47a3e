"""params.yaml -> frozen dataclasses, one per section.

Strict on purpose (nanoGPT's configurator style): an unknown section or key, a missing key or a
value of the wrong type raises ``ParamsError`` naming the dotted key. No untyped dict travels past
this loader except ``model.kwargs``, which the model registry checks against the architecture's
signature (``models.registry.create_model``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from pipelines.files import ParamsError

__all__ = ["ParamsError", "Params", "DataParams", "load_params", "parse_params", "section_dict"]

DEFAULT_PATH = Path("params.yaml")


@dataclass(frozen=True)
class DataParams:
    """What to collect. ``task: auto`` infers it from the target (see ``pipelines/tabular.py``).

    ``target`` names the target column of a table (required for ``csv:``/``parquet:`` files, which
    the file sources check; bundled tables default it); ``drop`` lists columns to leave out.

    ``text`` names a text column: the source is then a text-classification corpus (``csv:``,
    ``jsonl:`` or ``parquet:``) whose labels are in ``target``; rows with an empty text or a missing
    label are dropped and reported (``empty_texts: drop``) or stop collect (``empty_texts: error``).

    ``columns`` forces a table column's type, ``{name: numeric | categorical}``, over the inference
    rules of ``pipelines/modalities/tabular/infer.py``: ``categorical`` for an integer-coded category
    (a store id, a count of cards) or any column; ``numeric`` for a whole-number count that would be
    taken for a code. A forced column is never dropped as an ID or a constant; a forced-numeric
    column with a value that is not a number stops collect. Not used with ``text``.

    ``image`` names a column of image file paths (relative to the CSV): a ``csv:`` source is then a
    set of labelled images (``target`` the label column), read like ``folder:<dir>`` and ``idx:<dir>``
    sources by the image modality. ``bad_images``: unreadable, corrupt, empty or non-image files are
    skipped and listed in the profile (``skip``) or stop collect (``error``).
    """

    source: str = "sklearn:digits"
    task: str = "auto"  # auto, or a registered task (pipelines.plugins.list_tasks)
    target: str = ""
    drop: tuple[str, ...] = ()
    text: str = ""
    empty_texts: Literal["drop", "error"] = "drop"
    columns: dict[str, str] = field(default_factory=dict)
    image: str = ""
    bad_images: Literal["skip", "error"] = "skip"

    def labels_optional(self) -> bool:
        """True when ``task`` names a task that learns without labels (anomaly, embedding)."""
        from pipelines.plugins import get_task

        return self.task != "auto" and not get_task(self.task).needs_labels

    def __post_init__(self) -> None:
        from pipelines.plugins import list_tasks

        if self.task != "auto" and self.task not in list_tasks():
            raise ParamsError(f"data.task: expected auto or a registered task ({', '.join(list_tasks())}), "
                              f"got {self.task!r}")
        if not self.source.strip():
            raise ParamsError("data.source: must not be empty")
        for key in ("target", "text", "image"):
            if getattr(self, key) != getattr(self, key).strip():
                raise ParamsError(f"data.{key}: has leading/trailing spaces: {getattr(self, key)!r}")
        if self.text:
            if self.text == self.target:
                raise ParamsError(f"data.text: {self.text!r} is also the label column (data.target)")
            if self.task not in ("auto", "classification"):
                raise ParamsError(f"data.task: text sources (data.text set) are classification only, got {self.task!r}")
            if self.drop:
                raise ParamsError("data.drop: not used with data.text (only the text and label columns are read)")
        if self.image:
            if self.text:
                raise ParamsError(f"data.image: set together with data.text ({self.text!r}); "
                                  "a source is images or texts")
            if self.image == self.target:
                raise ParamsError(f"data.image: {self.image!r} is also the label column (data.target)")
            if self.task == "regression":
                raise ParamsError("data.task: image sources (data.image set) are classification only, got 'regression'")
        for i, name in enumerate(self.drop):
            if not name.strip():
                raise ParamsError(f"data.drop[{i}]: empty column name")
            if name in self.drop[:i]:
                raise ParamsError(f"data.drop[{i}]: column {name!r} listed twice")
            if name == self.target:
                raise ParamsError(f"data.drop[{i}]: {name!r} is the target column (data.target)")
        if self.columns and self.text:
            raise ParamsError("data.columns: not used with data.text (only the text and label columns are read)")
        for name, kind in self.columns.items():
            if not name.strip():
                raise ParamsError(f"data.columns.{name}: empty column name")
            if kind not in ("numeric", "categorical"):
                raise ParamsError(f"data.columns.{name}: expected 'numeric' or 'categorical', got {kind!r}")
            if name == self.target:
                raise ParamsError(f"data.columns.{name}: {name!r} is the target column (data.target)")
            if name in self.drop:
                raise ParamsError(f"data.columns.{name}: {name!r} is also listed in data.drop")


@dataclass(frozen=True)
class SplitParams:
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    seed: int = 42
    stratify: bool = True

    def __post_init__(self) -> None:
        for key in ("val_fraction", "test_fraction"):
            if not 0.0 < getattr(self, key) < 1.0:
                raise ParamsError(f"split.{key}: must be in (0, 1), got {getattr(self, key)}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ParamsError("split.val_fraction + split.test_fraction: must be < 1")


@dataclass(frozen=True)
class TextParams:
    """Tokenizer for text sources, fitted in split on the train texts only (``pipelines/text.py``).

    ``level``: ``word`` splits on whitespace and punctuation and isolates each CJK character (so
    Chinese/Japanese are character-level, English word-level); ``char`` makes every character a
    token; ``auto`` is ``char`` when collect profiled the corpus as CJK script, else ``word``.
    The vocabulary keeps tokens seen ``min_frequency`` times, at most ``max_vocab`` of them
    (``<pad>`` and ``<unk>`` included); sequences are cut to ``max_len`` tokens.
    """

    level: Literal["auto", "word", "char"] = "auto"
    lowercase: bool = True
    min_frequency: int = 2
    max_vocab: int = 20000
    max_len: int = 128

    def __post_init__(self) -> None:
        for key, low in (("min_frequency", 1), ("max_vocab", 3), ("max_len", 1)):
            if getattr(self, key) < low:
                raise ParamsError(f"text.{key}: must be >= {low}, got {getattr(self, key)}")


@dataclass(frozen=True)
class ImageParams:
    """Decoded images (``folder:``, ``idx:`` and ``csv:`` + ``data.image`` sources; not the bundled digits).

    Every image is stretched to ``size`` ``[height, width]`` (bilinear, nothing cropped) once, in
    collect; ``channels``: 1 (gray), 3 (RGB) or ``auto`` (1 when every image is grayscale, else 3).
    """

    size: tuple[int, ...] = (64, 64)
    channels: Union[Literal["auto"], int] = "auto"

    def __post_init__(self) -> None:
        if len(self.size) != 2 or not all(4 <= v <= 1024 for v in self.size):
            raise ParamsError(f"image.size: expected [height, width], each in 4..1024, got {list(self.size)}")
        if self.channels not in ("auto", 1, 3):
            raise ParamsError(f"image.channels: expected auto, 1 or 3, got {self.channels!r}")


@dataclass(frozen=True)
class ModelParams:
    name: str = "cnn"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimParams:
    loss: Literal["auto", "cross_entropy", "mse", "huber"] = "auto"
    class_weights: Literal["none", "balanced"] = "none"
    label_smoothing: float = 0.0
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: Union[float, Literal["auto"]] = 0.003
    weight_decay: float = 0.0
    momentum: float = 0.9
    scheduler: Literal["none", "cosine", "step", "onecycle"] = "none"
    step_size: int = 10
    gamma: float = 0.5

    def __post_init__(self) -> None:
        if self.lr != "auto" and not self.lr > 0:
            raise ParamsError(f"optim.lr: must be > 0 or 'auto', got {self.lr}")
        if self.weight_decay < 0:
            raise ParamsError(f"optim.weight_decay: must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.momentum < 1.0:
            raise ParamsError(f"optim.momentum: must be in [0, 1), got {self.momentum}")
        if self.step_size < 1:
            raise ParamsError(f"optim.step_size: must be >= 1, got {self.step_size}")
        if not 0.0 < self.gamma <= 1.0:
            raise ParamsError(f"optim.gamma: must be in (0, 1], got {self.gamma}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ParamsError(f"optim.label_smoothing: must be in [0, 1), got {self.label_smoothing}")


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 20
    batch_size: int = 64
    patience: int = 5
    seed: int = 7
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    # one process (auto), or DistributedDataParallel over ``devices`` processes (ddp: gloo on CPU, NCCL on
    # GPUs); ``batch_size`` stays the rows per optimiser step: each process takes batch_size / devices
    strategy: Literal["auto", "ddp"] = "auto"
    devices: int = 1
    num_threads: int = 1
    # auto: the modality decides (photos: on; digits, IDX files, tables, texts: off); true: on (an error
    # where the data has no augmentation); false: off
    augment: Union[bool, Literal["auto"]] = "auto"
    experiment: str = "dlops"

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "patience", "num_threads", "devices"):
            if getattr(self, key) < 1:
                raise ParamsError(f"train.{key}: must be >= 1, got {getattr(self, key)}")
        if self.strategy == "auto" and self.devices != 1:
            raise ParamsError(f"train.devices: {self.devices} processes need train.strategy: ddp")
        if self.batch_size % self.devices:
            raise ParamsError(f"train.batch_size: {self.batch_size} rows per step do not split evenly over "
                              f"train.devices: {self.devices} processes")


@dataclass(frozen=True)
class EvaluateParams:
    """``metric`` decides the verdict, the gate and the champion: ``auto`` lets the task choose from
    the data (classification: accuracy when the classes are balanced, ROC-AUC for an imbalanced
    binary target, macro F1 for imbalanced multiclass; regression: R²) or name one of the task's
    metrics. The gate passes when the test value of that metric is at least ``min_score``."""

    metric: str = "auto"
    min_score: float = 0.0
    # binary classification: each model's decision threshold tuned on the validation split for this objective
    threshold_objective: Literal["f1", "balanced_accuracy", "none"] = "f1"
    baselines: tuple[Literal["logreg", "svc", "knn", "gboost", "linear", "tfidf_logreg", "isolation_forest",
                              "knn_distance", "pca_error", "pca_kmeans", "gmm"], ...] = ("logreg", "svc")

    def __post_init__(self) -> None:
        if not self.metric.strip():
            raise ParamsError("evaluate.metric: must not be empty (auto, or a metric name such as accuracy, roc_auc, r2)")
        if not math.isfinite(self.min_score):
            raise ParamsError(f"evaluate.min_score: must be a finite number, got {self.min_score}")


@dataclass(frozen=True)
class DeployParams:
    model_name: str = "dlops"
    parity_atol: float = 1e-4
    parity_batch_sizes: tuple[int, ...] = (1, 7, 64)
    register: bool = True       # MLflow Model Registry version + alias
    build_bento: bool = True    # `bentoml build` of serving/ with this model

    def __post_init__(self) -> None:
        if not self.parity_batch_sizes or min(self.parity_batch_sizes) < 1:
            raise ParamsError(f"deploy.parity_batch_sizes: need positive batch sizes, got {self.parity_batch_sizes}")
        if self.parity_atol <= 0:
            raise ParamsError(f"deploy.parity_atol: must be > 0, got {self.parity_atol}")


@dataclass(frozen=True)
class AnomalyParams:
    """``data.task: anomaly``: an autoencoder's reconstruction error is the anomaly score.

    ``train_on``: ``normal`` trains the network (and fits every baseline) on the train rows labelled
    normal only -- when the data has labels; ``all`` on every train row. ``anomaly_label``: the target
    value that marks an anomaly (empty: the minority class). ``denoise``: input noise level while
    training (0: a plain autoencoder). ``percentile``: without labels, a row is flagged when its score is
    above this percentile of the validation scores (with labels the threshold maximises F1 on val).
    """

    train_on: Literal["normal", "all"] = "normal"
    anomaly_label: str = ""
    denoise: float = 0.0
    percentile: float = 99.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.denoise <= 5.0:
            raise ParamsError(f"anomaly.denoise: must be in [0, 5], got {self.denoise}")
        if not 50.0 <= self.percentile < 100.0:
            raise ParamsError(f"anomaly.percentile: must be in [50, 100), got {self.percentile}")


@dataclass(frozen=True)
class EmbeddingParams:
    """``data.task: embedding``: an autoencoder's latent vectors, clustered with k-means.

    ``clusters``: k, or ``auto`` (k in 2..``max_clusters`` with the best silhouette on validation).
    k-means is fitted on the train vectors (for the network and the PCA baseline alike).
    ``denoise``: input noise level while training (0: a plain autoencoder).
    """

    clusters: Union[int, Literal["auto"]] = "auto"
    max_clusters: int = 12
    denoise: float = 0.0

    def __post_init__(self) -> None:
        if self.clusters != "auto" and not 2 <= self.clusters <= 1000:
            raise ParamsError(f"embedding.clusters: must be 'auto' or in 2..1000, got {self.clusters}")
        if not 2 <= self.max_clusters <= 1000:
            raise ParamsError(f"embedding.max_clusters: must be in 2..1000, got {self.max_clusters}")
        if not 0.0 <= self.denoise <= 5.0:
            raise ParamsError(f"embedding.denoise: must be in [0, 5], got {self.denoise}")


@dataclass(frozen=True)
class GenerationParams:
    """``data.task: generation``: a GAN for images, judged by a classifier trained on the same data.

    ``conditional``: the generator takes a class (needs labels). Evaluate draws ``samples`` images
    from the generator (and from each baseline) and counts those the judge classifies (as the requested
    class, when conditional) with probability >= ``confidence``; the judge is a CNN trained for
    ``judge_epochs`` epochs on the train split by the classification task's loss.
    """

    conditional: bool = True
    samples: int = 1000
    confidence: float = 0.9
    judge_epochs: int = 30

    def __post_init__(self) -> None:
        if not 10 <= self.samples <= 100_000:
            raise ParamsError(f"generation.samples: must be in 10..100000, got {self.samples}")
        if not 0.0 < self.confidence < 1.0:
            raise ParamsError(f"generation.confidence: must be in (0, 1), got {self.confidence}")
        if self.judge_epochs < 1:
            raise ParamsError(f"generation.judge_epochs: must be >= 1, got {self.judge_epochs}")


@dataclass(frozen=True)
class Params:
    data: DataParams = field(default_factory=DataParams)
    split: SplitParams = field(default_factory=SplitParams)
    text: TextParams = field(default_factory=TextParams)
    image: ImageParams = field(default_factory=ImageParams)
    model: ModelParams = field(default_factory=ModelParams)
    optim: OptimParams = field(default_factory=OptimParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    deploy: DeployParams = field(default_factory=DeployParams)
    anomaly: AnomalyParams = field(default_factory=AnomalyParams)
    embedding: EmbeddingParams = field(default_factory=EmbeddingParams)
    generation: GenerationParams = field(default_factory=GenerationParams)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (lists become tuples)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if value in args and type(value) is type(args[args.index(value)]):
            return value
        raise ParamsError(f"{key}: expected one of {', '.join(map(repr, args))}, got {value!r}")
    if origin in (Union, types.UnionType):
        errors = []
        for arg in args:
            try:
                return _coerce(value, arg, key)
            except ParamsError:
                errors.append(_type_name(arg))
        raise ParamsError(f"{key}: expected {' or '.join(errors)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ParamsError(f"{key}: expected a mapping with string keys, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise ParamsError(f"{key}: must be a finite number, got {value}")
    if tp in (int, float) and isinstance(value, bool) or not isinstance(value, tp):
        raise ParamsError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, raw: Any, prefix: str, complete: bool = False) -> Any:
    if raw is None and not complete:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{prefix}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ParamsError(
            f"{prefix}.{unknown[0]}: unknown key (valid keys in '{prefix}': {', '.join(sorted(names))})"
        )
    kwargs = {}
    for name in sorted(names & set(raw)):
        key = f"{prefix}.{name}"
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _build(hints[name], raw[name], key)
        else:
            kwargs[name] = _coerce(raw[name], hints[name], key)
    missing = sorted(names - set(raw)) if complete else []
    if missing:  # a deleted line must not silently become the code's default
        default = getattr(cls(), missing[0])
        raise ParamsError(f"{prefix}.{missing[0]}: missing (params.yaml lists every key; the default would be "
                          f"{section_value(default)!r})")
    return cls(**kwargs)


def parse_params(raw: Any, complete: bool = False) -> Params:
    """Build ``Params`` from an already-parsed mapping (e.g. from ``yaml.safe_load``). ``complete``:
    every section and key must be there (a params.yaml file), else missing ones take the defaults."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"params: expected a mapping of sections, got {type(raw).__name__}")
    sections = {f.name for f in dataclasses.fields(Params)}
    unknown = sorted(set(raw) - sections)
    if unknown:
        raise ParamsError(f"{unknown[0]}: unknown section (valid: {', '.join(sorted(sections))})")
    hints = typing.get_type_hints(Params)
    built = {name: _build(hints[name], raw[name], name, complete) for name in sorted(sections & set(raw))}
    missing = sorted(sections - set(raw)) if complete else []
    if missing:  # after the sections that are there: a bad value there is the more useful message
        raise ParamsError(f"{missing[0]}: missing section (params.yaml lists every section: see presets/)")
    built.update({name: _build(hints[name], None, name) for name in sections - set(raw)})
    return Params(**built)


def section_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def apply_overrides(raw: Any, overrides: Mapping[str, Any] | None) -> Any:
    """A copy of the parsed params.yaml with each dotted key (``train.epochs``, ``model.kwargs.hidden``)
    set to its value. Keys are not checked here: ``parse_params`` names an unknown one."""
    merged = copy.deepcopy(raw)
    if not overrides:
        return merged
    if not isinstance(overrides, Mapping):
        raise ParamsError(f"overrides: expected a mapping of dotted keys to values, got {overrides!r}")
    for key, value in overrides.items():
        parts = key.split(".") if isinstance(key, str) else []
        if len(parts) < 2 or not all(p.strip() for p in parts):
            raise ParamsError(f"overrides: {key!r}: expected a dotted key such as 'train.epochs'")
        if not isinstance(merged, dict):
            return merged  # parse_params reports the file itself
        node = merged
        for i, part in enumerate(parts[:-1]):
            if node.get(part) is None:
                node[part] = {}
            elif not isinstance(node[part], dict):
                raise ParamsError(f"overrides: {key!r}: {'.'.join(parts[:i + 1])} is a value, not a section")
            node = node[part]
        node[parts[-1]] = copy.deepcopy(value)
    return merged


def load_params(path: str | Path = DEFAULT_PATH, overrides: Mapping[str, Any] | None = None) -> Params:
    """Load and validate params.yaml, with ``overrides`` (dotted keys, see ``apply_overrides``) merged over
    it first; errors name the file and the dotted key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    where = f"{path} + overrides" if overrides else str(path)
    merged = apply_overrides(raw, overrides) if overrides else raw
    try:
        return parse_params(merged, complete=True)
    except ParamsError as exc:
        raise ParamsError(f"{where}: {exc}") from None


def section_dict(section: Any) -> dict[str, Any]:
    """A section as plain JSON-able data (tuples become lists)."""
    return dataclasses.asdict(section, dict_factory=lambda kv: {k: list(v) if isinstance(v, tuple) else v for k, v in kv})
