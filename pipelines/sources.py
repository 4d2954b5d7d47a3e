"""Data sources: a small pluggable interface. A source turns ``data`` params into a ``Dataset``
(arrays: images), a ``Table`` (a raw data frame, typed and validated by ``pipelines.tabular``) or,
when ``data.text`` names a text column, a ``TextTable`` (validated by ``pipelines.text``).

Image files (``folder:<dir>``, ``csv:<path>`` with ``data.image``) are listed as an ``ImageFiles``
(paths + labels, decoded by the image modality) and MNIST-style IDX files (``idx:<dir>``) read as an
``ImageArrays`` (uint8 pixels + labels).

Register a new one with ``@register_source("kind:name")``; ``data.source`` picks it by name. A name
ending in ``<arg>`` is a prefix that takes an argument: ``@register_source("csv:<path>")`` serves
``data.source: csv:data/churn.csv`` (the function reads the argument with ``source_arg``).
Every dataset goes through ``validate_dataset`` (arrays), ``tabular.prepare_table`` (tables) or
``text.prepare_texts`` (texts) before anything is written.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import numpy as np

from pipelines.files import DataError, ParamsError

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.params import DataParams

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class ImageFiles:
    """Labelled image files, not yet opened: ``paths[i]`` has label ``labels[i]``; ``names[i]`` is how
    the profile and errors name it (relative to ``origin``). ``bad`` lists entries refused before any
    decoding (a missing file, an empty label) as ``(name, reason)``."""

    paths: tuple[Path, ...]
    labels: tuple[str, ...]
    names: tuple[str, ...]
    origin: str
    bad: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ImageArrays:
    """Labelled images already as pixels: uint8 ``X`` ``[N, H, W]`` (gray), integer labels ``y``, and
    ``names[i]`` naming row i (``<file>#<index>``)."""

    X: np.ndarray
    y: np.ndarray
    names: tuple[str, ...]
    origin: str


SourceFn = Callable[["DataParams"], Union[Dataset, Table, TextTable, ImageFiles, ImageArrays]]
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


def load_source(params: DataParams) -> Dataset | Table | TextTable | ImageFiles | ImageArrays:
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
    if not params.target and not params.labels_optional():
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


# The label column of a table read without labels (``data.task: anomaly|embedding`` and no ``data.target``):
# every value empty, so the task knows there are none
NO_TARGET = "__no_label__"


def _file_result(frame: pd.DataFrame, params: DataParams, path: Path,
                 lines: tuple[int, ...] | None = None) -> Table | TextTable:
    if params.text:
        return TextTable(frame=frame, text=params.text, target=params.target, origin=str(path), lines=lines)
    if not params.target:  # a task that learns without labels: an empty label column stands in
        if NO_TARGET in frame.columns:
            raise DataError(f"{path}: column {NO_TARGET!r} is reserved (it marks a table without labels)")
        frame = frame.assign(**{NO_TARGET: ""})
        return Table(frame=frame, target=NO_TARGET, origin=str(path))
    return Table(frame=frame, target=params.target, origin=str(path))


DELIMITERS = ",;\t|"  # comma, and what exports use beside it: ";" (European Excel, UCI's wine and bank tables), tab, pipe


# in a ";"-delimited file a comma is the decimal separator ("1,5"): such a cell reads as "1.5", in collect
# and in batch prediction alike ("1,500" there is 1.5, never the thousands that a comma file would mean)
_DECIMAL_COMMA = re.compile(r"\s*[+-]?\d*,\d+\s*")


def decimal_comma(cell: Any) -> Any:
    """A ";"-file's cell with its decimal comma as a point (``"1,5"`` -> ``"1.5"``); others unchanged."""
    return cell.replace(",", ".") if isinstance(cell, str) and _DECIMAL_COMMA.fullmatch(cell) else cell


def csv_delimiter(path: Path) -> str:
    """The delimiter of a delimited text file, read from its header row (collect and batch prediction
    both ask here): the candidate (``DELIMITERS``) that splits the header into the most fields outside
    quotes; a comma when none splits it (a one-column file)."""
    import csv
    import gzip
    import io

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:
            header = fh.readline()
    except (OSError, UnicodeDecodeError, EOFError):
        return ","  # the reader reports it
    best, fields = ",", 1
    for delimiter in DELIMITERS:
        n = len(next(csv.reader(io.StringIO(header), delimiter=delimiter), []))
        if n > fields:
            best, fields = delimiter, n
    return best


@register_source("csv:<path>", suffixes=(".csv", ".csv.gz", ".tsv", ".tsv.gz"), modality="tabular")
def csv_file(params: DataParams) -> Table | TextTable | ImageFiles:
    """A CSV file with a header row; empty cells and the usual NA spellings are missing. The delimiter
    is read from the header (``csv_delimiter``: comma, semicolon, tab or pipe; ``.tsv`` too).

    With ``data.text`` every cell is read as written (a review saying "NA" is text): only empty
    cells are missing. With ``data.image`` it lists labelled image files (``image_list``).
    """
    import pandas as pd

    path = _table_file(params)
    text_kw = ({"dtype": str, "keep_default_na": False} if params.text or params.image
               else {"skipinitialspace": True})
    try:
        delimiter = csv_delimiter(path)
        header = _check_header(path, delimiter)
        frame = pd.read_csv(path, low_memory=False, sep=delimiter, **text_kw)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty (no header row)") from None
    except UnicodeDecodeError as exc:
        raise DataError(not_utf8(path, exc)) from None
    except (OSError, ValueError) as exc:  # ParserError is a ValueError
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: not a readable CSV file: {exc}") from None
    # a header cell's stray spaces are no part of its name ("Age " is "Age"), as _check_header and batch
    # prediction read the header
    frame.columns = [c.strip() if isinstance(c, str) else c for c in frame.columns]
    frame = _drop_unnamed_empty(frame, header, path)
    if params.image:
        return image_list(frame, params, path)
    if delimiter == ";" and not params.text:
        for name in frame.columns:
            if frame[name].dtype == object or pd.api.types.is_string_dtype(frame[name]):
                frame[name] = frame[name].map(decimal_comma)
    return _file_result(frame, params, path)


def image_list(frame: pd.DataFrame, params: DataParams, path: Path) -> ImageFiles:
    """The rows of a CSV of image paths (relative to the CSV's folder) and labels; a row with an
    empty path or label, or a path that is not a file, is listed as bad (CSV line numbers)."""
    for key in ("image", "target"):
        column = getattr(params, key)
        if column not in frame.columns:
            raise DataError(f"{path}: no column {column!r} (from data.{key}; "
                            f"columns: {', '.join(map(str, frame.columns))})")
    root = path.parent
    paths, labels, names, bad = [], [], [], []
    for i, (rel, label) in enumerate(zip(frame[params.image].tolist(), frame[params.target].tolist())):
        rel, label = str(rel).strip(), str(label).strip()
        where = f"{path}: line {i + 2}"
        if not rel:
            bad.append((where, f"empty {params.image!r}"))
        elif not label:
            bad.append((f"{rel} ({where})", f"empty label {params.target!r}"))
        elif not (root / rel).is_file():
            bad.append((f"{rel} ({where})", "file not found"))
        else:
            paths.append(root / rel)
            labels.append(label)
            names.append(rel)
    return ImageFiles(tuple(paths), tuple(labels), tuple(names), str(path), tuple(bad))


@register_source("folder:<dir>", modality="image")
def image_folder(params: DataParams) -> ImageFiles:
    """One sub-folder per class (``pets/cat/*.jpg``, ``pets/dog/*.png``; nested folders below a class
    belong to it), or split folders holding them (``pets/train/cat``, ``pets/test/cat``: pooled).
    Hidden files (``.DS_Store``) are ignored; any other file is a candidate image."""
    root = Path(source_arg(params))
    _no_columns(params, "folder:<dir>")
    if not root.is_dir():
        raise DataError(f"{root}: folder not found (from data.source {params.source!r}; "
                        f"relative paths are from {Path.cwd()})")
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class sub-folders (expected one folder per class, e.g. {root}/cat/1.jpg)")
    classes = _pooled_split_folders(root, classes)
    paths, labels, names = [], [], []
    for folder in classes:
        for f in sorted(folder.rglob("*")):
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(root).parts):
                paths.append(f)
                labels.append(folder.name)
                names.append(str(f.relative_to(root)))
    if not paths:
        raise DataError(f"{root}: no files in the class folders {[c.name for c in classes]}")
    return ImageFiles(tuple(paths), tuple(labels), tuple(names), str(root))


# a dataset shipped already split: pets/train/cat/*.jpg, pets/test/cat/*.jpg
SPLIT_FOLDER_NAMES = frozenset({"train", "training", "val", "valid", "validation", "dev", "test", "testing"})


def _pooled_split_folders(root: Path, top: list[Path]) -> list[Path]:
    """The class folders of ``root``: its sub-folders, or, when they are all split folders
    (``train/``, ``val/``, ``test/``...) holding class folders, those class folders of every split,
    pooled (and split again by the ``split`` section, as IDX's train and t10k are). Files directly in a
    split folder have no class: they are left out, and counted in the log."""
    import logging

    if not all(d.name.lower() in SPLIT_FOLDER_NAMES for d in top):
        return top
    inner = [c for d in top for c in sorted(d.iterdir()) if c.is_dir() and not c.name.startswith(".")]
    if not inner:
        return top
    loose = {d.name: n for d in top if (n := sum(1 for f in d.iterdir() if f.is_file()
                                                  and not f.name.startswith(".")))}
    logging.getLogger(__name__).warning(
        "%s: %s are split folders: their class folders are pooled (%d classes: %s) and split again by the "
        "split section%s", root, sorted(d.name for d in top), len({c.name for c in inner}),
        sorted({c.name for c in inner})[:10],
        f"; files with no class folder left out: {loose}" if loose else "")
    return inner


def _no_columns(params: DataParams, name: str) -> None:
    for key in ("target", "drop", "image", "text", "columns"):
        if getattr(params, key):
            raise ParamsError(f"data.{key}: {name} sources have no columns; leave it unset")


IDX_PARTS = ("train", "t10k")


@register_source("idx:<dir>", modality="image")
def idx_files(params: DataParams) -> ImageArrays:
    """MNIST-style IDX files in one folder: ``train-images-idx3-ubyte`` + ``train-labels-idx1-ubyte``
    and optionally the ``t10k-`` pair (``.gz`` or not; ``train-images.idx3-ubyte`` spellings too).
    Both pairs are pooled; split then makes train/val/test with the split params."""
    root = Path(source_arg(params))
    _no_columns(params, "idx:<dir>")
    if not root.is_dir():
        raise DataError(f"{root}: folder not found (from data.source {params.source!r}; "
                        f"relative paths are from {Path.cwd()})")
    Xs, ys, names = [], [], []
    for part in IDX_PARTS:
        images, labels = _idx_path(root, part, "images", "idx3"), _idx_path(root, part, "labels", "idx1")
        if images is None and labels is None and part != "train":
            continue
        for what, found in (("images", images), ("labels", labels)):
            if found is None:
                raise DataError(f"{root}: no {part}-{what} IDX file (expected {part}-{what}-"
                                f"{'idx3' if what == 'images' else 'idx1'}-ubyte, optionally .gz)")
        X, y = _read_idx(images, 3), _read_idx(labels, 1)
        if len(X) != len(y):
            raise DataError(f"{labels}: {len(y)} labels but {images.name} has {len(X)} images")
        Xs.append(X)
        ys.append(y.astype(np.int64))
        names += [f"{images.name}#{i}" for i in range(len(X))]
    if len({X.shape[1:] for X in Xs}) > 1:
        raise DataError(f"{root}: train and t10k images differ in size ({[list(X.shape[1:]) for X in Xs]})")
    return ImageArrays(np.concatenate(Xs), np.concatenate(ys), tuple(names), str(root))


def _idx_path(root: Path, part: str, what: str, kind: str) -> Path | None:
    found = sorted(f for f in root.iterdir() if f.is_file() and f.name.startswith(f"{part}-{what}")
                   and kind in f.name)
    return found[0] if found else None


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file (http://yann.lecun.com/exdb/mnist/): magic ``0 0 0x08 ndim``, big-endian int32
    dimensions, then unsigned bytes."""
    import gzip
    import struct

    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if len(raw) < 4 or raw[:2] != b"\0\0":
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    if raw[2] != 0x08 or raw[3] != ndim:
        raise DataError(f"{path}: expected unsigned-byte IDX data with {ndim} dimension(s), "
                        f"got type 0x{raw[2]:02x} with {raw[3]}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(f"{path}: IDX header says {'x'.join(map(str, dims))} = {expected:,} bytes of data, "
                        f"file has {len(raw) - header:,} (truncated?)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def not_utf8(path: Path, exc: UnicodeDecodeError) -> str:
    """One line for a file that is not UTF-8 (collect's and batch prediction's): where, and how to fix it."""
    try:
        with open(path, "rb") as fh:
            start = fh.read(2)
    except OSError:
        start = b""
    if start in (b"\xff\xfe", b"\xfe\xff"):  # Excel's "Unicode Text" export, Windows tools
        return (f"{path}: UTF-16 text (it starts with a UTF-16 byte-order mark), not UTF-8: save it as UTF-8, "
                f"e.g. `iconv -f UTF-16 -t UTF-8 in.csv > out.csv` (or Excel's \"CSV UTF-8\")")
    return (f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at byte {exc.start}; a GBK, Latin-1 or "
            f"Windows-1252 file?): save it as UTF-8, e.g. `iconv -f GBK -t UTF-8 in.csv > out.csv`")


def _check_header(path: Path, delimiter: str = ",") -> list[str]:
    """The header's names, stripped. Refuses duplicate names: pandas would silently rename the second
    ``age`` to ``age.1``."""
    import csv
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:
        header = [c.strip() for c in next(csv.reader(fh, delimiter=delimiter), [])]
    seen: dict[str, int] = {}
    for i, name in enumerate(header):
        if name and name in seen:
            raise DataError(f"{path}: duplicate column name {name!r} (columns {seen[name] + 1} and {i + 1} of the "
                            "header): rename one")
        seen.setdefault(name, i)
    return header


def _drop_unnamed_empty(frame: Any, header: list[str], path: Path) -> Any:
    """Leave out columns without a name and without a value: a trailing delimiter on every line (an
    Excel export's habit) reads as such a column. A named empty column stays, and collect names it."""
    if len(header) != frame.shape[1]:
        return frame
    empty = [i for i, name in enumerate(header)
             if not name and (frame.iloc[:, i].astype("string").str.strip().fillna("") == "").all()]
    if empty:
        log.warning("%s: leaving out %d column(s) without a header name and without values (header position(s) "
                    "%s: a trailing delimiter?)", path, len(empty), ", ".join(str(i + 1) for i in empty))
        frame = frame.drop(columns=[frame.columns[i] for i in empty])
    return frame


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
        raise DataError(not_utf8(path, exc)) from None
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
