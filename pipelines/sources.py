"""Data sources: a small pluggable interface. A source turns ``data`` params into a ``Dataset``
(arrays: images), a ``Table`` (a raw data frame, typed and validated by ``pipelines.tabular``) or,
when ``data.text`` names a text column, a ``TextTable`` (validated by ``pipelines.text``).

Register a new one with ``@register_source("kind:name")``; ``data.source`` picks it by name. A name
ending in ``<arg>`` is a prefix that takes an argument: ``@register_source("csv:<path>")`` serves
``data.source: csv:data/churn.csv`` (the function reads the argument with ``source_arg``).
Every dataset goes through ``validate_dataset`` (arrays), ``tabular.prepare_table`` (tables) or
``text.prepare_texts`` (texts) before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Union

import numpy as np

from pipelines.files import DataError, ParamsError

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.params import DataParams

Kind = Literal["image", "tabular", "text"]


@dataclass(frozen=True)
class Dataset:
    """Features + target as arrays. Images are float32 ``(N, C, H, W)``."""

    X: np.ndarray
    y: np.ndarray
    kind: Kind
    origin: str  # what to name in errors: a file path or the source name
    class_names: tuple[str, ...] = ()
    value_range: tuple[float, float] | None = None  # documented range of feature values
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Table:
    """A table as read, before type inference; ``target`` is one of its columns.

    ``task`` is the known task of a bundled table (``None``: infer it or take ``data.task``).
    """

    frame: pd.DataFrame
    target: str
    origin: str  # what to name in errors: a file path or the source name
    task: Literal["classification", "regression"] | None = None


@dataclass(frozen=True)
class TextTable:
    """A text-classification file as read: ``frame`` holds every column, data row i at index i
    (0-based, the header is not a row); ``text`` and ``target`` name the text and label columns.
    ``lines`` gives the 1-based file line of each row where the file has lines per row (JSONL)."""

    frame: pd.DataFrame
    text: str
    target: str
    origin: str
    lines: tuple[int, ...] | None = None


SourceFn = Callable[["DataParams"], Union[Dataset, Table, TextTable]]
_SOURCES: dict[str, SourceFn] = {}
_PREFIXES: dict[str, tuple[str, tuple[str, ...]]] = {}  # "csv:" -> ("csv:<path>", accepted suffixes)
_MODALITY: dict[str, str] = {}  # source name -> the modality that reads it (pipelines/plugins.py)


def register_source(name: str, suffixes: tuple[str, ...] = (), modality: str = "") -> Callable[[SourceFn], SourceFn]:
    """Register under ``name``; ``"kind:<arg>"`` registers a prefix whose argument must end in one
    of ``suffixes`` (when given), so ``csv:nope`` is an unknown source, not a missing file.
    ``modality`` names the modality whose ``claims`` accepts the source (see ``source_modality``)."""

    def deco(fn: SourceFn) -> SourceFn:
        if name in _SOURCES:
            raise ValueError(f"data source {name!r} registered twice")
        _SOURCES[name] = fn
        _MODALITY[name] = modality
        if name.endswith(">") and "<" in name:
            _PREFIXES[name[: name.index("<")]] = (name, tuple(x.lower() for x in suffixes))
        return fn

    return deco


def unregister_source(name: str) -> None:
    """Forget a source (tests that register their own clean up with this)."""
    _SOURCES.pop(name, None)
    _MODALITY.pop(name, None)
    for prefix, (registered, _) in list(_PREFIXES.items()):
        if registered == name:
            del _PREFIXES[prefix]


def list_sources() -> list[str]:
    return sorted(_SOURCES)


def source_arg(params: DataParams) -> str:
    """The argument of a prefix source: ``data/churn.csv`` for ``csv:data/churn.csv``."""
    return params.source.split(":", 1)[1]


def source_name(source: str) -> str | None:
    """The registered name serving ``source`` (``csv:<path>`` for ``csv:data/x.csv``), or None."""
    pattern_names = {name for name, _ in _PREFIXES.values()}
    if source in _SOURCES and source not in pattern_names:
        return source
    for prefix, (name, suffixes) in _PREFIXES.items():
        arg = source[len(prefix):]
        if source.startswith(prefix) and arg and (not suffixes or arg.lower().endswith(suffixes)):
            return name
    return None


def source_modality(source: str) -> str | None:
    """The modality registered for the source serving ``source`` (None: unknown source)."""
    name = source_name(source)
    return None if name is None else _MODALITY.get(name, "")


def unknown_source_hint(source: str) -> str:
    """For an unknown ``source`` that starts like a file source: the suffixes it needs."""
    return "".join(f"; {name} needs a path ending in {' or '.join(suffixes)}"
                   for prefix, (name, suffixes) in _PREFIXES.items() if source.startswith(prefix) and suffixes)


def load_source(params: DataParams) -> Dataset | Table | TextTable:
    name = source_name(params.source)
    if name is None:
        raise ParamsError(f"data.source: unknown source {params.source!r} (valid: {', '.join(list_sources())})"
                          + unknown_source_hint(params.source))
    return _SOURCES[name](params)


@register_source("sklearn:digits", modality="image")
def sklearn_digits(params: DataParams) -> Dataset:
    """scikit-learn's bundled UCI handwritten digits: 1,797 8x8 images, pixel values 0..16."""
    from sklearn.datasets import load_digits

    if params.task == "regression":
        raise ParamsError(f"data.task: sklearn:digits is a classification dataset, got {params.task!r}")
    for key in ("target", "drop"):
        if getattr(params, key):
            raise ParamsError(f"data.{key}: sklearn:digits is an image dataset without columns; leave it unset")
    bunch = load_digits()
    X = bunch.images.astype(np.float32)[:, None, :, :]
    return Dataset(
        X=X,
        y=bunch.target.astype(np.int64),
        kind="image",
        origin="sklearn:digits",
        class_names=tuple(str(c) for c in bunch.target_names),
        value_range=(0.0, 16.0),
    )


def _bundled_table(params: DataParams, frame: pd.DataFrame, name: str, task: str) -> Table:
    """A bundled table whose target column is ``target`` unless ``data.target`` picks another."""
    target = params.target or "target"
    known = task if target == "target" else None
    if known and params.task not in ("auto", known):
        raise ParamsError(f"data.task: {name} (target 'target') is a {known} dataset, got {params.task!r}")
    return Table(frame=frame, target=target, origin=name, task=known)


@register_source("sklearn:breast_cancer", modality="tabular")
def sklearn_breast_cancer(params: DataParams) -> Table:
    """scikit-learn's Wisconsin breast cancer table: 569 rows, 30 numeric features, binary target."""
    import pandas as pd
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame.copy()
    frame["target"] = pd.Series(bunch.target_names[bunch.target.to_numpy()], dtype="string")
    return _bundled_table(params, frame, "sklearn:breast_cancer", "classification")


@register_source("sklearn:diabetes", modality="tabular")
def sklearn_diabetes(params: DataParams) -> Table:
    """scikit-learn's diabetes table: 442 rows, 10 (already scaled) features, disease progression."""
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True).frame.copy()
    return _bundled_table(params, frame, "sklearn:diabetes", "regression")


def _table_file(params: DataParams) -> Path:
    """The file named by ``csv:<path>``/``parquet:<path>`` (relative to the current dir), checked."""
    path = Path(source_arg(params))
    if not params.target:
        what = "label" if params.text else "target"
        raise ParamsError(f"data.target: required for {params.source!r} (the name of the {what} column)")
    if not path.exists():
        raise DataError(f"{path}: file not found (from data.source {params.source!r}; "
                        f"relative paths are from {Path.cwd()})")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty (0 bytes)")
    return path


def _file_result(frame: pd.DataFrame, params: DataParams, path: Path,
                 lines: tuple[int, ...] | None = None) -> Table | TextTable:
    if params.text:
        return TextTable(frame=frame, text=params.text, target=params.target, origin=str(path), lines=lines)
    return Table(frame=frame, target=params.target, origin=str(path))


@register_source("csv:<path>", suffixes=(".csv", ".csv.gz"), modality="tabular")
def csv_file(params: DataParams) -> Table | TextTable:
    """A CSV file with a header row; empty cells and the usual NA spellings are missing.

    With ``data.text`` every cell is read as written (a review saying "NA" is text): only empty
    cells are missing.
    """
    import pandas as pd

    path = _table_file(params)
    text_kw = {"dtype": str, "keep_default_na": False} if params.text else {"skipinitialspace": True}
    try:
        _check_header(path)
        frame = pd.read_csv(path, low_memory=False, **text_kw)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty (no header row)") from None
    except UnicodeDecodeError as exc:
        raise DataError(_not_utf8(path, exc)) from None
    except (OSError, ValueError) as exc:  # ParserError is a ValueError
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: not a readable CSV file: {exc}") from None
    return _file_result(frame, params, path)


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> str:
    return (f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at byte {exc.start}; a GBK, Latin-1 or "
            f"Windows-1252 file?): save it as UTF-8, e.g. `iconv -f GBK -t UTF-8 in.csv > out.csv`")


def _check_header(path: Path) -> None:
    """Refuse duplicate column names: pandas would silently rename the second ``age`` to ``age.1``."""
    import csv
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        header = next(csv.reader(fh), [])
    seen: dict[str, int] = {}
    for i, name in enumerate(c.strip() for c in header):
        if name and name in seen:
            raise DataError(f"{path}: duplicate column name {name!r} (columns {seen[name] + 1} and {i + 1} of the "
                            "header): rename one")
        seen.setdefault(name, i)


@register_source("jsonl:<path>", suffixes=(".jsonl", ".jsonl.gz", ".ndjson"), modality="tabular")
def jsonl_file(params: DataParams) -> Table | TextTable:
    """JSON Lines: one JSON object per line (blank lines skipped); keys are columns, a key absent
    from a line is a missing value there. Errors name the file line."""
    import gzip
    import json

    import pandas as pd

    path = _table_file(params)
    records: list[dict] = []
    lines: list[int] = []
    try:
        with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")) as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}: line {lineno}: not valid JSON: {exc.msg} (column {exc.colno})") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}: line {lineno}: expected a JSON object, got {type(record).__name__}")
                records.append(record)
                lines.append(lineno)
    except UnicodeDecodeError as exc:
        raise DataError(_not_utf8(path, exc)) from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable JSONL file: {exc}") from None
    if not records:
        raise DataError(f"{path}: no JSON objects (only blank lines)")
    frame = pd.DataFrame.from_records(records)
    return _file_result(frame, params, path, tuple(lines))


@register_source("parquet:<path>", suffixes=(".parquet", ".pq"), modality="tabular")
def parquet_file(params: DataParams) -> Table | TextTable:
    """A Parquet file (read with pyarrow)."""
    import pandas as pd
    import pyarrow as pa

    path = _table_file(params)
    try:
        frame = pd.read_parquet(path, engine="pyarrow")
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise DataError(f"{path}: not a readable Parquet file: {exc}") from None
    return _file_result(frame, params, path)


def validate_dataset(ds: Dataset, task: str) -> list[str]:
    """Raise ``DataError`` naming origin/row/column on bad data; return the checks that passed."""
    X, y, where = ds.X, ds.y, ds.origin
    if len(X) == 0:
        raise DataError(f"{where}: dataset is empty (0 rows)")
    if len(X) != len(y):
        raise DataError(f"{where}: {len(X)} feature rows but {len(y)} targets")
    checks = ["non_empty", "rows_match_targets"]
    if not np.issubdtype(X.dtype, np.number):
        raise DataError(f"{where}: features must be numeric, got dtype {X.dtype}")
    flat = X.reshape(len(X), -1)
    bad = ~np.isfinite(flat)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise DataError(
            f"{where}: row {row}, column {col}: non-finite value {flat[row, col]} "
            f"({int(bad.sum())} non-finite values in {int(bad.any(axis=1).sum())} rows)"
        )
    checks.append("features_finite")
    if ds.value_range is not None:
        lo, hi = ds.value_range
        out = (flat < lo) | (flat > hi)
        if out.any():
            row, col = map(int, np.argwhere(out)[0])
            raise DataError(f"{where}: row {row}, column {col}: value {flat[row, col]} outside [{lo}, {hi}]")
        checks.append("features_in_range")
    checks += _validate_target(y, task, where)
    return checks


def _validate_target(y: np.ndarray, task: str, where: str) -> list[str]:
    if y.ndim != 1:
        raise DataError(f"{where}: target must be one column, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.number):
        raise DataError(f"{where}: target must be numeric (labels 0..K-1), got dtype {y.dtype}")
    bad = ~np.isfinite(y.astype(np.float64))
    if bad.any():
        raise DataError(f"{where}: row {int(np.argmax(bad))}, column target: non-finite target")
    if task == "regression":
        if np.ptp(y) == 0:
            raise DataError(f"{where}: column target: constant target ({y[0]}), nothing to learn")
        return ["target_finite", "target_varies"]
    if not np.all(np.mod(y, 1) == 0):
        row = int(np.argmax(np.mod(y, 1) != 0))
        raise DataError(f"{where}: row {row}, column target: classification label {y[row]} is not an integer")
    if y.min() < 0:
        raise DataError(f"{where}: row {int(np.argmin(y))}, column target: negative label {y.min()}")
    classes = np.unique(y)
    if len(classes) < 2:
        raise DataError(f"{where}: column target: a single class ({classes[0]}), need at least 2")
    return ["target_finite", "target_integer_labels", "at_least_two_classes"]
