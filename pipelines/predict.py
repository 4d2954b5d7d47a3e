"""Batch prediction: score a table, a file of texts or a folder of images offline with the deployed
ONNX model (ONNX Runtime in this process, no server), through the same code the service runs.

    python -m pipelines.predict --input data/new_customers.csv --output preds.csv
    python -m pipelines.predict --input data/new_photos --output preds.csv --model-uri models:/dlops-pets@champion

The model is loaded by ``serving.model`` (``--model DIR``, ``--model-uri URI``, else the service's
own rule: ``DLOPS_MODEL_URI`` / ``DLOPS_MODEL_DIR`` / ``artifacts/deploy``), so its manifest, sha256
and input contract are checked as for serving. What an input becomes depends on the model's request
side (``ADAPTERS``, keyed by its JSON field):

- ``records`` (tables): CSV (read as text: the tabular side's ``normalize`` reads raw cells as collect
  did), JSONL (a key absent from a line is a missing value there, as in collect) or Parquet; each row
  is validated by the request type and converted by ``RecordRequests.to_inputs``, exactly as a
  ``{"records": [...]}`` request is. Columns the model does not take (the target, an id) are ignored.
- ``texts``: the text column of a CSV/JSONL/Parquet file (``--column``; else the column the
  model learned from, named in its manifest; else ``text``, else the one column besides the
  target), validated and tokenized by ``TextRequests``.
- ``images``: a folder (recursively, files with ``decode.SUFFIXES``; others are counted, not read)
  or a CSV/JSONL/Parquet with a path column (``--column``; else ``path``/``image``/``file``; relative
  paths are from the table's folder). A model of image files (manifest ``input.image``) gets each
  file's bytes through its request side's ``to_inputs``, exactly as an upload (``decode`` at the
  manifest's size and channels, float32 0..255). A model of pixel arrays (the 8x8 digits) gets each
  file decoded to its size in gray and scaled linearly onto its ``value_range`` (0..255 -> 0..16; not
  inverted: bright strokes on a dark ground, as sklearn's digits), validated as ``{"images": [...]}``.

Output: one CSV row per scored item: the id (``row``: 0-based data row of the file; ``path``: the
file, relative to the folder, or as the table wrote it), the task's prediction fields (classification: ``label``,
``class_index``, ``probability`` and ``p_<class>`` per class; regression: ``value``), the request
side's per-item fields (texts: ``tokens``, ``truncated``) and ``actual`` when the input holds the
model's target column. Bad rows and files are skipped and listed in ``<output stem>.errors.csv``
(id, reason); the run fails (exit 2, one line) only when the model or the input is unusable or no
item at all could be scored. Both files are written beside their final names and moved in at the end.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

import numpy as np

from pipelines.modalities.schema import Inputs, RequestError

log = logging.getLogger(__name__)

DEFAULT_BATCH = 256
CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
SHOWN_ERRORS = 5  # bad items named in the stderr summary; all of them are in the errors CSV


class PredictError(RuntimeError):
    """The model or the input cannot be used at all (one line, exit 2)."""


@dataclass
class Chunk:
    """Up to one batch of what was read from the input: the items' ids, raw items, target values (or
    None) and places in reading order, and ``(place, id, reason)`` of rows that gave no item."""

    ids: list[str] = field(default_factory=list)
    items: list[Any] = field(default_factory=list)
    actual: list[Any] = field(default_factory=list)
    places: list[int] = field(default_factory=list)
    bad: list[tuple[int, str, str]] = field(default_factory=list)


# ---------------------------------------------------------------- row files (CSV, JSONL, Parquet)


def _suffix_of(path: Path, suffixes: tuple[str, ...]) -> bool:
    return path.name.lower().endswith(suffixes)


def _open_text(path: Path) -> Any:
    # utf-8-sig: a spreadsheet's byte-order mark must not become part of the first column's name
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


class RowFile:
    """A table read in chunks: ``columns`` (the header; JSONL: the first object's keys) and
    ``chunks(n)`` yielding lists of ``(row, record, None)``, or ``(row, None, reason)`` for a row
    that cannot be read. ``row`` is the 0-based data row (blank lines are no rows), as pandas counts."""

    def __init__(self, path: Path, decimal_commas: bool = False) -> None:
        self.path = path
        self._sep: str | None = None
        self.decimal_commas = decimal_commas  # a table's cells: a ";" file's "1,5" is 1.5, as collect reads it
        if _suffix_of(path, CSV_SUFFIXES):
            self.kind = "csv"
        elif _suffix_of(path, JSONL_SUFFIXES):
            self.kind = "jsonl"
        elif _suffix_of(path, PARQUET_SUFFIXES):
            self.kind = "parquet"
        else:
            known = ", ".join(CSV_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES)
            raise PredictError(f"{path}: unknown file type (use {known}, or a folder of images)")
        self.columns, self.total = self._header()

    def _header(self) -> tuple[list[str], int | None]:
        try:
            if self.kind == "parquet":
                import pyarrow.parquet as pq

                meta = pq.ParquetFile(self.path)
                return list(meta.schema_arrow.names), meta.metadata.num_rows
            with _open_text(self.path) as fh:
                if self.kind == "csv":
                    header = next(csv.reader(fh, delimiter=self._delimiter()), None)
                    if header is None:
                        raise PredictError(f"{self.path}: file is empty (no header row)")
                    names = [h.strip() for h in header]
                    dupes = sorted({n for n in names if n and names.count(n) > 1})
                    if dupes:
                        raise PredictError(f"{self.path}: duplicate column names {dupes}: rename them")
                    return names, None
                for line in fh:
                    try:
                        first = json.loads(line) if line.strip() else None
                    except json.JSONDecodeError:
                        continue  # a bad line is a bad row, reported when it is read
                    if isinstance(first, dict):
                        return list(first), None
                return [], None
        except PredictError:
            raise
        except UnicodeDecodeError as exc:
            from pipelines.sources import not_utf8

            raise PredictError(not_utf8(self.path, exc)) from None
        except Exception as exc:  # noqa: BLE001 - OSError, JSON and Arrow errors: one line naming the file
            raise PredictError(f"{self.path}: not a readable {self.kind} file: {str(exc)[:200]}") from None

    def _delimiter(self) -> str:
        from pipelines.sources import csv_delimiter

        if self._sep is None:
            self._sep = csv_delimiter(self.path)  # as collect reads it
        return self._sep

    def chunks(self, size: int, wanted: list[str] | None = None) -> Iterator[list[tuple[int, Any, str | None]]]:
        reader = {"csv": self._csv, "jsonl": self._jsonl, "parquet": self._parquet}[self.kind]
        batch: list[tuple[int, Any, str | None]] = []
        try:
            for row in reader(size, wanted):
                batch.append(row)
                if len(batch) >= size:
                    yield batch
                    batch = []
        except UnicodeDecodeError as exc:
            raise PredictError(f"{self.path}: not UTF-8 text after row {batch[-1][0] if batch else 'start'} "
                               f"({exc.reason}; a GBK, Latin-1 or Windows-1252 file?): save it as UTF-8, e.g. "
                               f"`iconv -f GBK -t UTF-8 in.csv > out.csv`") from None
        except (OSError, csv.Error, EOFError) as exc:
            raise PredictError(f"{self.path}: stopped reading: {str(exc)[:200]}") from None
        if batch:
            yield batch

    def _csv(self, size: int, wanted: list[str] | None) -> Iterator[tuple[int, Any, str | None]]:
        from pipelines.sources import decimal_comma

        comma_decimals = self.decimal_commas and self._delimiter() == ";"
        with _open_text(self.path) as fh:
            rows = csv.reader(fh, delimiter=self._delimiter())
            header = [h.strip() for h in next(rows)]
            n = len(header)
            i = 0
            for values in rows:
                if not values:  # a blank line is no row, as pandas reads it
                    continue
                if len(values) != n:
                    yield i, None, f"expected {n} fields as the header has, got {len(values)}"
                else:
                    if comma_decimals:
                        values = [decimal_comma(v) for v in values]
                    yield i, dict(zip(header, values)), None
                i += 1

    def _jsonl(self, size: int, wanted: list[str] | None) -> Iterator[tuple[int, Any, str | None]]:
        with _open_text(self.path) as fh:
            i = 0
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield i, None, f"line {lineno}: not valid JSON: {exc.msg} (column {exc.colno})"
                else:
                    if isinstance(record, dict):
                        yield i, record, None
                    else:
                        yield i, None, f"line {lineno}: expected a JSON object, got {type(record).__name__}"
                i += 1

    def _parquet(self, size: int, wanted: list[str] | None) -> Iterator[tuple[int, Any, str | None]]:
        import pyarrow.parquet as pq

        columns = [c for c in wanted if c in self.columns] if wanted is not None else None
        i = 0
        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=size, columns=columns):
            for record in batch.to_pylist():
                yield i, record, None
                i += 1


def _missing(value: Any) -> Any:
    """A file's NaN is a missing value (as collect reads it); the service's JSON NaN literal is an error."""
    return None if isinstance(value, float) and math.isnan(value) else value


# ---------------------------------------------------------------- adapters: input -> the request side's items


class Adapter:
    """How an input becomes one request side's items, and those items graph inputs (the request
    side's own validation and ``to_inputs``, as for a request to the service)."""

    unit = "row"
    id_name = "row"

    def __init__(self, model: Any, path: Path, column: str | None) -> None:
        self.model, self.side, self.path = model, model.requests, path
        self.target = model.manifest.get("target")
        self.table = self._table(path)
        self.has_target = self.table is not None and bool(self.target) and self.target in self.table.columns
        self.total = self.table.total if self.table is not None else None

    @cached_property
    def items_adapter(self) -> Any:
        from pydantic import TypeAdapter

        return TypeAdapter(self.side.items_type())

    def _table(self, path: Path) -> RowFile | None:
        if path.is_dir():
            raise PredictError(f"{path}: a folder is read as image files; this {self.model.manifest.get('kind')} "
                               "model takes a CSV, JSONL or Parquet file")
        return RowFile(path, decimal_commas=self.model.manifest.get("kind") == "tabular")

    def item(self, record: dict[str, Any]) -> Any:
        """The request side's item for one row (raise ``ValueError`` naming what is wrong)."""
        raise NotImplementedError

    def wanted(self) -> list[str] | None:
        return None

    def ident(self, row: int, record: dict[str, Any]) -> str:
        """The output's id of a readable row."""
        return str(row)

    def bad_ident(self, row: int) -> str:
        """The errors file's id of a row that gave no item."""
        return str(row)

    def chunks(self, size: int) -> Iterator[Chunk]:
        wanted = self.wanted()
        if wanted is not None and self.target:
            wanted = [*wanted, self.target]
        for rows in self.table.chunks(size, wanted):
            chunk = Chunk()
            for place, (i, record, unreadable) in enumerate(rows):
                if unreadable is not None:
                    chunk.bad.append((place, self.bad_ident(i), unreadable))
                    continue
                try:
                    item = self.item(record)
                except ValueError as exc:
                    chunk.bad.append((place, self.bad_ident(i), str(exc)))
                    continue
                chunk.places.append(place)
                chunk.ids.append(self.ident(i, record))
                chunk.items.append(item)
                chunk.actual.append(_missing(record.get(self.target)) if self.has_target else None)
            yield chunk

    def inputs(self, items: list[Any]) -> tuple[Inputs | None, list[int], list[tuple[int, str]]]:
        """Graph inputs of the items that pass the request side's checks, their positions, and the
        (position, reason) of the others."""
        valid, kept, bad = [], [], []
        step = max(1, self.side.max_items)
        for start in range(0, len(items), step):
            part = items[start:start + step]
            try:
                valid.extend(self.items_adapter.validate_python(part))
                kept.extend(range(start, start + len(part)))
            except Exception:  # noqa: BLE001 - some item is bad: find which, one by one
                for j, item in enumerate(part, start=start):
                    try:
                        valid.extend(self.items_adapter.validate_python([item]))
                        kept.append(j)
                    except Exception as exc:  # noqa: BLE001 - ValidationError, TypeError, OverflowError
                        bad.append((j, self._reason(exc)))
        if not valid:
            return None, [], bad
        try:
            return self.side.to_inputs(valid), kept, bad
        except RequestError as exc:  # the whole batch is refused: say so for each item
            return None, [], bad + [(j, str(exc)) for j in kept]

    def _reason(self, exc: Exception) -> str:
        """The service's 400 message for a one-item request, without the ``<field>[0]`` prefix."""
        from pydantic import ValidationError

        field_name = self.side.field
        if not isinstance(exc, ValidationError):
            return str(exc)[:300]
        first = exc.errors(include_url=False)[0]
        if first["type"].startswith("invalid_"):
            message = first["msg"]
        else:
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
            message = f"{field_name}{where}: {first['msg']}"
        return message.replace(f"{field_name}[0]", "", 1).lstrip(".: ") or message


class RecordsAdapter(Adapter):
    """Rows of a table -> ``{"records": [...]}`` items: the model's columns, as the file has them."""

    def __init__(self, model: Any, path: Path, column: str | None) -> None:
        super().__init__(model, path, column)
        self.columns = [c["name"] for c in self.side.columns]
        if self.table.kind != "jsonl":
            absent = [c for c in self.columns if c not in self.table.columns]
            if absent:
                raise PredictError(f"{path}: no column(s) {absent}; the model takes {self.columns} "
                                   f"(the file has {self.table.columns})")

    def wanted(self) -> list[str] | None:
        return self.columns

    def item(self, record: dict[str, Any]) -> Any:
        if not any(c in record for c in self.columns):
            raise ValueError(f"none of the model's columns {self.columns}")
        return {c: _missing(record.get(c)) for c in self.columns}


def _pick_column(given: str | None, declared: Any, defaults: tuple[str, ...], columns: list[str],
                 target: str | None, what: str, path: Path) -> str:
    """The input's column holding the items: ``--column``, the manifest's, a usual name, or the only
    column besides the target."""
    if given:
        if given not in columns:
            raise PredictError(f"{path}: no column {given!r} (the file has {columns})")
        return given
    for name in ([declared] if isinstance(declared, str) else []) + list(defaults):
        if name in columns:
            return name
    others = [c for c in columns if c != target]
    if len(others) == 1:
        return others[0]
    raise PredictError(f"{path}: which column holds the {what}? pass --column (the file has {columns})")


class TextsAdapter(Adapter):
    """The text column of a table -> ``{"texts": [...]}`` items."""

    def __init__(self, model: Any, path: Path, column: str | None) -> None:
        super().__init__(model, path, column)
        spec = model.manifest["input"]
        declared = spec.get("column") or spec.get("text_column")
        self.column = _pick_column(column, declared, ("text",), self.table.columns, self.target, "texts", path)

    def wanted(self) -> list[str] | None:
        return [self.column]

    def item(self, record: dict[str, Any]) -> Any:
        if self.column not in record:
            raise ValueError(f"no {self.column!r} field")
        return _missing(record[self.column])


class ImagesAdapter(Adapter):
    """Image files (a folder, or a table's path column). A model of image files (its request side
    takes files: ``accepts_files``) gets each file's bytes through that side's own ``to_inputs``, as
    an upload is; a model of pixel arrays (the 8x8 digits) gets each file ``decode_file``-d to its
    size in gray, scaled onto its ``value_range``, and validated as a ``{"images": [...]}`` item."""

    unit = "file"
    id_name = "path"

    def __init__(self, model: Any, path: Path, column: str | None) -> None:
        side, shape = model.requests, model.manifest["input"].get("shape") or [-1, 1, 8, 8]
        self.size, self.channels = (int(shape[2]), int(shape[3])), int(shape[1])
        # the pixel-array side's own range (the manifest's value_range, or its default)
        self.lo, self.hi = float(getattr(side, "lo", 0.0)), float(getattr(side, "hi", 255.0))
        self.files: list[Path] = []
        self.skipped = 0  # files in the folder without an image suffix
        super().__init__(model, path, column)
        if self.table is None:
            self.total = len(self.files)
        else:
            self.column = _pick_column(column, None, ("path", "image", "file", "filename"), self.table.columns,
                                       self.target, "image paths", path)

    def _table(self, path: Path) -> RowFile | None:
        if not path.is_dir():
            return RowFile(path)
        self.files, self.skipped = self._listing(path)
        if not self.files:
            raise PredictError(f"{path}: no image files (suffixes {', '.join(_suffixes())}) in the folder or below it")
        return None

    @staticmethod
    def _listing(folder: Path) -> tuple[list[Path], int]:
        suffixes = _suffixes()
        files, skipped = [], 0
        for root, dirs, names in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                if name.startswith("."):
                    continue
                if name.lower().endswith(suffixes):
                    files.append(Path(root) / name)
                else:
                    skipped += 1
        return files, skipped

    def wanted(self) -> list[str] | None:
        return [self.column]

    def item(self, record: dict[str, Any]) -> Any:
        value = record.get(self.column)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{self.column}: expected a file path, got {value!r}")
        # the name is the path as the table wrote it; relative paths are from the table's folder
        return value.strip(), self.path.parent / value.strip()

    def ident(self, row: int, record: dict[str, Any]) -> str:
        return record[self.column].strip()

    def bad_ident(self, row: int) -> str:
        return f"row {row}"  # no usable path to name it by

    def chunks(self, size: int) -> Iterator[Chunk]:
        if self.table is not None:
            yield from super().chunks(size)
            return
        for start in range(0, len(self.files), size):
            files = self.files[start:start + size]
            names = [f.relative_to(self.path).as_posix() for f in files]
            yield Chunk(ids=names, items=list(zip(names, files)), actual=[None] * len(files),
                        places=list(range(len(files))))

    def inputs(self, items: list[Any]) -> tuple[Inputs | None, list[int], list[tuple[int, str]]]:
        if getattr(self.side, "accepts_files", False):
            return self._file_inputs(items)
        pixels, where, bad = [], [], []
        for j, (name, path) in enumerate(items):
            try:
                pixels.append(self.pixels(self._decode(name, path)).tolist())
                where.append(j)
            except Exception as exc:  # noqa: BLE001 - Pillow raises many types on hostile files: a bad file
                bad.append((j, _decode_reason(name, exc)))
        inputs, kept, refused = super().inputs(pixels)
        return inputs, [where[k] for k in kept], bad + [(where[k], reason) for k, reason in refused]

    def _decode(self, name: str, path: Path) -> np.ndarray:
        from pipelines.modalities.image.decode import decode

        return decode(self._read(name, path), name, self.size, self.channels)[0]

    def _read(self, name: str, path: Path) -> bytes:
        from pipelines.modalities.image.decode import ImageDecodeError

        limit = getattr(self.side, "max_file_bytes", None)
        try:
            if limit is not None and path.stat().st_size > limit:  # refused as the service would, unread
                raise ImageDecodeError(f"{name}: {path.stat().st_size:,} bytes, over the limit of {limit:,} bytes "
                                       "per file")
            return path.read_bytes()
        except OSError as exc:
            raise ImageDecodeError(f"{name}: cannot read ({exc.strerror})") from None

    def _file_inputs(self, items: list[Any]) -> tuple[Inputs | None, list[int], list[tuple[int, str]]]:
        """Each file through the request side's ``to_inputs`` alone (it stops at a request's first bad
        file), the graph inputs then stacked into one batch."""
        parts, kept, bad = [], [], []
        for j, (name, path) in enumerate(items):
            try:
                parts.append(self.side.to_inputs([(name, self._read(name, path))]))
                kept.append(j)
            except Exception as exc:  # noqa: BLE001 - RequestError, ImageDecodeError, or a stray Pillow error
                bad.append((j, _decode_reason(name, exc)))
        if not parts:
            return None, [], bad
        feeds = {key: np.concatenate([p.feeds[key] for p in parts]) for key in parts[0].feeds}
        extras = [extra for p in parts for extra in (p.extras or [{}])]
        return Inputs(feeds, extras), kept, bad

    def pixels(self, gray: np.ndarray) -> np.ndarray:
        """uint8 0..255 gray pixels mapped linearly onto the model's ``value_range`` (digits: 0..16)."""
        return self.lo + gray.astype(np.float64) * ((self.hi - self.lo) / 255.0)


def _decode_reason(name: str, exc: Exception) -> str:
    from pipelines.modalities.image.decode import ImageDecodeError

    if isinstance(exc, (ImageDecodeError, RequestError)):
        return str(exc)[:300]
    return f"{name}: cannot decode it ({type(exc).__name__}: {str(exc)[:100]})"


def _suffixes() -> tuple[str, ...]:
    from pipelines.modalities.image.decode import SUFFIXES

    return tuple(SUFFIXES)


ADAPTERS: dict[str, type[Adapter]] = {"records": RecordsAdapter, "texts": TextsAdapter, "images": ImagesAdapter}


def adapter_for(model: Any, path: Path, column: str | None) -> Adapter:
    if not path.exists():
        raise PredictError(f"{path}: no such file or folder")
    adapter = ADAPTERS.get(model.requests.field)
    if adapter is None:
        raise PredictError(f"no batch reader for {model.requests.field!r} models (known: {sorted(ADAPTERS)})")
    return adapter(model, path, column)


# ---------------------------------------------------------------- output


def _is_list(annotation: Any) -> bool:
    if get_origin(annotation) is list:
        return True
    return get_origin(annotation) in (Union, UnionType) and any(get_origin(a) is list for a in get_args(annotation))


def _class_column(field_name: str, label: str) -> str:
    return f"p_{label}" if field_name == "probabilities" else f"{field_name}_{label}"


def output_columns(model: Any, adapter: Adapter) -> tuple[list[str], dict[str, list[str]]]:
    """The output CSV's header: the id, the task's prediction fields (a per-class list becomes one
    column per class), the request side's per-item fields, ``actual`` when the input has the target;
    and which list fields expand to which columns."""
    classes = [str(c) for c in model.manifest.get("classes") or []]
    columns, expanded = [adapter.id_name], {}
    for name, (annotation, _) in model.task.prediction_fields(model.manifest).items():
        if _is_list(annotation):
            expanded[name] = [_class_column(name, c) for c in classes]
            columns += expanded[name]
        else:
            columns.append(name)
    columns += list(model.requests.extra_fields())
    if adapter.has_target:
        columns.append("actual")
    return columns, expanded


def errors_path(output: Path) -> Path:
    """``preds.csv`` -> ``preds.errors.csv``."""
    return output.with_name(f"{output.stem if output.suffix else output.name}.errors.csv")


class Outputs:
    """The predictions and errors CSVs, written under temporary names beside the final ones and moved
    in on success (an interrupted run leaves no half file under the real name)."""

    def __init__(self, output: Path, columns: list[str], id_name: str) -> None:
        self.final = [output, errors_path(output)]
        output.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = [p.with_name(f".{p.name}.tmp-pid{os.getpid()}") for p in self.final]
        self.files = [open(p, "w", encoding="utf-8", newline="") for p in self.tmp]
        self.predictions, self.errors = (csv.writer(f) for f in self.files)
        self.columns = columns
        self.predictions.writerow(columns)
        self.errors.writerow([id_name, "reason"])

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.predictions.writerows([["" if row.get(c) is None else row[c] for c in self.columns] for row in rows])

    def bad(self, items: list[tuple[str, str]]) -> None:
        self.errors.writerows(items)

    def close(self, keep: bool) -> None:
        for f in self.files:
            f.close()
        for tmp, final in zip(self.tmp, self.final):
            if keep:
                os.replace(tmp, final)
            else:
                tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------- progress


class _Counter:
    """A stderr counter, when tqdm is not installed."""

    def __init__(self, total: int | None, unit: str) -> None:
        self.n, self.total, self.unit, self.shown = 0, total, unit, 0.0

    def update(self, n: int) -> None:
        self.n += n
        if time.monotonic() - self.shown >= 1.0:
            self.shown = time.monotonic()
            of = f"/{self.total}" if self.total else ""
            sys.stderr.write(f"\r{self.n}{of} {self.unit}s")
            sys.stderr.flush()

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\n")


class _Silent:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int | None, unit: str, enabled: bool) -> Any:
    if not enabled:
        return _Silent()
    try:
        from tqdm import tqdm
    except ImportError:
        return _Counter(total, unit)
    return tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True, mininterval=0.5)


# ---------------------------------------------------------------- scoring


@dataclass
class Tally:
    """What the run saw: items read, scored, bad (and the first few reasons), the request side's notes
    summed over batches, and label agreement where the input had the target."""

    read: int = 0
    scored: int = 0
    bad: int = 0
    first_bad: list[tuple[str, str]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    labelled: int = 0
    correct: int = 0

    def add_bad(self, items: list[tuple[str, str]]) -> None:
        self.bad += len(items)
        self.first_bad.extend(items[:SHOWN_ERRORS - len(self.first_bad)])

    def add_notes(self, notes: dict[str, Any]) -> None:
        for name, value in notes.items():
            if isinstance(value, dict):
                total = self.notes.setdefault(name, {})
                for key, n in value.items():
                    total[key] = total.get(key, 0) + n
            elif isinstance(value, int) and not isinstance(value, bool):
                # counts add up over batches; a ``max_*`` note is the model's limit, the same in each
                self.notes[name] = value if name.startswith("max_") else self.notes.get(name, 0) + value
            else:
                self.notes[name] = value


def score_chunk(model: Any, adapter: Adapter, chunk: Chunk, expanded: dict[str, list[str]],
                tally: Tally) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Output rows of the chunk's items that could be scored, and (id, reason) of the others."""
    inputs, kept, refused = adapter.inputs(chunk.items) if chunk.items else (None, [], [])
    bad = [(i, r) for _, i, r in sorted(chunk.bad + [(chunk.places[j], chunk.ids[j], r) for j, r in refused])]
    if inputs is None:
        return [], bad
    try:
        outputs = model.run(inputs.feeds)
    except Exception as exc:  # noqa: BLE001 - an ORT failure on valid inputs is the model's, not a row's
        raise PredictError(f"ONNX Runtime failed on {adapter.id_name}s {chunk.ids[kept[0]]}..{chunk.ids[kept[-1]]}: "
                           f"{str(exc).splitlines()[0][:300]}") from None
    predictions, _ = model.task.respond(outputs, model.manifest)
    extras = inputs.extras or [{}] * len(predictions)
    rows = []
    for j, prediction, extra in zip(kept, predictions, extras):
        row = {adapter.id_name: chunk.ids[j], **extra}
        for name, value in prediction.items():
            if name in expanded:
                row.update(zip(expanded[name], value or []))
            else:
                row[name] = value
        if adapter.has_target:
            row["actual"] = chunk.actual[j]
            _agreement(model, row, tally)
        rows.append(row)
    tally.add_notes(inputs.notes)
    return rows, bad


def _agreement(model: Any, row: dict[str, Any], tally: Tally) -> None:
    """Count label agreement for tasks that predict labels, on rows whose target is one of the classes."""
    if not model.task.compares_labels or row["actual"] is None:
        return
    actual = str(row["actual"]).strip()
    classes = model.manifest.get("classes") or []
    if actual not in classes:  # "YES" is the class "Yes": collect merged such spellings (pipelines.labels)
        same = [c for c in classes if c.casefold() == actual.casefold()]
        actual = same[0] if len(same) == 1 else actual
    if actual in classes:
        tally.labelled += 1
        tally.correct += int(row.get("label") == actual)


def run(model: Any, input_path: Path, output: Path, batch_size: int = DEFAULT_BATCH, column: str | None = None,
        progress: bool = True) -> dict[str, Any]:
    """Score every item of ``input_path`` with ``model`` (``serving.model.LoadedModel``) into ``output``
    and its errors CSV; returns the summary. Raises ``PredictError`` when the input is unusable."""
    input_path, output = Path(input_path), Path(output)
    started = time.perf_counter()
    adapter = adapter_for(model, input_path, column)
    columns, expanded = output_columns(model, adapter)
    log.info("scoring %s (%s %ss) with %s version %s", input_path, adapter.total or "?", adapter.unit,
             model.manifest["model_name"], model.manifest["version"])
    tally = Tally()
    out = Outputs(output, columns, adapter.id_name)
    bar = progress_bar(adapter.total, adapter.unit, progress)
    keep = False
    try:
        for chunk in adapter.chunks(batch_size):
            rows, bad = score_chunk(model, adapter, chunk, expanded, tally)
            out.write(rows)
            out.bad(bad)
            tally.read += len(chunk.ids) + len(chunk.bad)
            tally.scored += len(rows)
            tally.add_bad(bad)
            bar.update(len(chunk.ids) + len(chunk.bad))
        keep = tally.read > 0  # nothing read: no files, only the error
    finally:
        bar.close()
        out.close(keep)
    if not tally.read:
        raise PredictError(f"{input_path}: no {adapter.unit}s to score")
    summary = _summary(model, adapter, input_path, output, tally, time.perf_counter() - started)
    if not tally.scored:
        raise PredictError(f"none of the {tally.read} {adapter.unit}s could be scored; reasons in "
                           f"{errors_path(output)} (first: {tally.first_bad[0][0]}: {tally.first_bad[0][1]})")
    return summary


def _summary(model: Any, adapter: Adapter, input_path: Path, output: Path, tally: Tally,
             seconds: float) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "input": str(input_path), "output": str(output), "errors": str(errors_path(output)),
        "model": f"{model.manifest['model_name']} version {model.manifest['version']} ({model.source})",
        "read": tally.read, "scored": tally.scored, "bad": tally.bad, "seconds": round(seconds, 2),
        "per_second": round(tally.read / seconds, 1) if seconds > 0 else None, "notes": tally.notes,
        "first_bad": [{adapter.id_name: i, "reason": r} for i, r in tally.first_bad],
    }
    if getattr(adapter, "skipped", 0):
        summary["skipped_files"] = adapter.skipped  # no image suffix: not read, not an error
    if tally.labelled:
        summary["label_agreement"] = {"rows": tally.labelled, "accuracy": round(tally.correct / tally.labelled, 6)}
    return summary


# ---------------------------------------------------------------- entry point


def load(model_dir: Path | None, model_uri: str | None) -> Any:
    """The model as the service would load it: ``--model`` dir, ``--model-uri``, else the service's rule."""
    from serving.model import load_model, load_model_from

    if model_uri:
        return load_model({"DLOPS_MODEL_URI": model_uri})
    if model_dir is not None:
        return load_model_from(Path(model_dir).resolve(), str(model_dir))
    return load_model()


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _report(summary: dict[str, Any]) -> None:
    """The human summary on stderr (the JSON summary goes to stdout)."""
    line = (f"scored {summary['scored']} of {summary['read']} in {summary['seconds']:.1f}s -> {summary['output']}")
    if summary["bad"]:
        line += f"; {summary['bad']} skipped (reasons in {summary['errors']})"
    sys.stderr.write(line + "\n")
    for bad in summary["first_bad"]:
        ident, reason = (str(v) for v in bad.values())
        sys.stderr.write(f"  skipped {reason if reason.startswith(ident) else f'{ident}: {reason}'}\n")
    if "label_agreement" in summary:
        agreement = summary["label_agreement"]
        sys.stderr.write(f"  accuracy against the input's target column: {agreement['accuracy']:.4f} "
                         f"on {agreement['rows']} rows\n")


def main(argv: list[str] | None = None) -> None:
    from pipelines.logs import setup_logging
    from serving.model import ModelLoadError

    parser = argparse.ArgumentParser(prog="python -m pipelines.predict", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, required=True,
                        help="a CSV/JSONL/Parquet file (tables, texts, image paths) or a folder of images")
    parser.add_argument("--output", type=Path, required=True, help="predictions CSV (bad items: <stem>.errors.csv)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, help="a deployed model dir (default: as the service: "
                                                   "DLOPS_MODEL_URI / DLOPS_MODEL_DIR / artifacts/deploy)")
    source.add_argument("--model-uri", help="a registry model, e.g. models:/dlops-digits@champion "
                                            "(with MLFLOW_TRACKING_URI)")
    parser.add_argument("--batch-size", type=_positive, default=DEFAULT_BATCH)
    parser.add_argument("--column", help="the input column holding the texts or image paths")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        model = load(args.model, args.model_uri)
        summary = run(model, args.input, args.output, args.batch_size, args.column, not args.no_progress)
    except (PredictError, ModelLoadError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
    _report(summary)
    print(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
