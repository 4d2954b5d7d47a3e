"""The tabular modality's request side: the request schema generated from the model's training
schema, the record -> ONNX input conversion (``RecordRequests``), and ``normalize``: the one raw value -> model value rule that
collect (``infer.py``) and the service share.

``normalize(value, kind)`` maps one raw cell of a column to what the model sees, so a row sent as
the raw file has it gets the pipeline's own prediction:

* ``"categorical"`` -> the canonical category text, or ``None`` (missing): text is stripped; ``""``,
  whitespace, the CSV reader's NA spellings (``NA``, ``null``, ``NaN``...) and ``?`` (``NA_TEXTS``) are
  missing; booleans and ``True``/``TRUE``/``true`` (and false) are ``"true"``/``"false"``; an integer
  or a whole number (``2``, ``2.0``, ``"2"``, ``" 2 "``, ``"02"``) is ``"2"``; other numbers are
  their shortest float text (``0.5``, ``"0.50"`` -> ``"0.5"``); a non-finite number is an error.
* ``"numeric"`` -> a float or ``None``: numbers, and numeric strings (surrounding whitespace
  allowed; ``"1e3"`` yes, ``"1_000"``/``"0x10"`` no), also as exports format them: a currency
  sign, comma thousands in groups of three, a trailing percent (``"$1,234.50"`` -> 1234.5,
  ``"-€12"`` -> -12, ``"45%"`` -> 45; ``"1,5"`` is not a number); ``""``/NA spellings/NaN are
  missing; a boolean is not a number (``TypeError``).

``records_type(columns)`` builds the request type from the manifest's ``input.columns``: one
required, nullable field per column (numeric: a finite number or a numeric string; categorical: a
string, an integer, a finite number or a boolean, as the raw file had it; the train categories are
listed in the field's description and ``x-categories``). As for images,
``check_records`` first walks the raw JSON and stops at the first problem, so every error names one
record and one field, and hands the ``Record`` model the normalised values; the typed model then
documents the schema (/docs.json).

Nulls are not errors: they go to the column's missing bucket (numeric: the train median). A
category never seen in training goes to the unknown bucket. ``tally`` counts both for the response.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Annotated, Any, Literal, Optional

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, create_model
from pydantic_core import PydanticCustomError

from pipelines.modalities.schema import MAX_BODY_BYTES, Inputs, RequestSide, describe as _describe

MAX_RECORDS = 1024  # per request; a 20-column record is ~0.5 KB of JSON, far below the body limit
FLOAT32_MAX = float(np.finfo(np.float32).max)

__all__ = ["MAX_BODY_BYTES", "MAX_RECORDS", "NA_TEXTS", "normalize", "records_type", "check_records", "tally", "to_rows",
           "feeds", "RecordRequests"]


# ---------------------------------------------------------------- raw value -> model value (shared with collect)

# the CSV reader's (pandas') default NA spellings: the raw file's "NA" cell is missing in training, so it is
# missing when a client sends the raw text too; and "?", the missing marker of the UCI repository's tables
NA_TEXTS = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                      "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null", "?"})
TRUE_TEXTS = frozenset({"True", "TRUE", "true"})  # what the CSV reader reads as booleans
FALSE_TEXTS = frozenset({"False", "FALSE", "false"})
# What the schema promises for a numeric string (the service takes more: any float32-range number): up to
# 7 mantissa digits, exponents up to 31, blanks and NA spellings (missing) - every such text is accepted.
NUMERIC_TEXT_PATTERN = (r"^\s*(?:[+-]?(?:\d{1,7}(?:\.\d{0,12})?|\.\d{1,12})(?:[eE][+-]?(?:[0-2]?\d|3[01]))?"
                        r"|NA|N/A|NaN|null|nan|NULL|None|n/a|<NA>|\?)?\s*$")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
# a number as spreadsheets and exports format it: a currency sign, comma thousands in strict groups of
# three ("1,234,567.5"; "1,5" is not one, so a decimal comma is never misread), a trailing percent
_FORMATTED = re.compile(r"(?P<sign>[+-]?)\s*(?P<currency>[$€£¥])?\s*(?P<inner>[+-]?)"
                        r"(?P<digits>\d{1,3}(?:,\d{3})+(?:\.\d*)?|\d+\.?\d*|\.\d+)\s*(?P<percent>%)?")


def _number_text(value: float) -> str:
    """A finite float as a category: whole -> ``"2"`` (as collect names integer codes), else ``repr``."""
    return str(int(value)) if value == int(value) else repr(value)


def _category(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        number = float(value)
        if math.isnan(number):
            return None
        if math.isinf(number):
            raise ValueError(f"non-finite number {number} as a category")
        return _number_text(number)
    if isinstance(value, str):
        text = value.strip()
        if text in NA_TEXTS:
            return None
        if text in TRUE_TEXTS or text in FALSE_TEXTS:
            return "true" if text in TRUE_TEXTS else "false"
        if _INTEGER.fullmatch(text):
            return str(int(text))
        if _NUMBER.fullmatch(text):
            number = float(text)
            return _number_text(number) if math.isfinite(number) else text
        return text
    raise TypeError(f"expected text, a number or a boolean, got {type(value).__name__}")


def _number(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        raise TypeError("a boolean is not a number")
    if isinstance(value, numbers.Real):
        try:
            number = float(value)
        except OverflowError:  # an int beyond float range
            return math.inf if value > 0 else -math.inf
        return None if math.isnan(number) else number
    if isinstance(value, str):
        text = value.strip()
        if text in NA_TEXTS:
            return None
        if _NUMBER.fullmatch(text):
            return float(text)
        if (m := _FORMATTED.fullmatch(text)) and not (m["sign"] and m["inner"]) and (
                m["currency"] or m["percent"] or "," in m["digits"]):
            number = float(m["digits"].replace(",", ""))  # "45%" is 45, as the file wrote it
            return -number if "-" in (m["sign"], m["inner"]) else number
        raise ValueError(f"not a number: {value!r}")
    raise TypeError(f"expected a number or a numeric string, got {type(value).__name__}")


def normalize(value: Any, kind: Literal["numeric", "categorical"] | str) -> str | float | None:
    """One raw cell of a ``kind`` column as the model sees it (module doc): a category text, a float,
    or ``None`` for missing. Raises ``TypeError``/``ValueError`` for a value the column cannot hold.
    A numeric result may be infinite: callers reject those (collect: ``DataError``; service: 400)."""
    if kind == "numeric":
        return _number(value)
    if kind == "categorical":
        return _category(value)
    raise ValueError(f"unknown column type {kind!r} (numeric or categorical)")


# ---------------------------------------------------------------- request validation


def _fail(where: str, problem: str, shown: str = "") -> PydanticCustomError:
    return PydanticCustomError("invalid_records", "{where}: {problem}{shown}",
                               {"where": where, "problem": problem, "shown": f", got {shown}" if shown else ""})


def _check_value(col: dict[str, Any], value: Any, where: str) -> str | float | None:
    """The normalised value, or raise naming ``where``."""
    if value is None:
        return None
    if col["type"] == "numeric":
        # bool is an int subclass, but a raw table never has a boolean in a numeric column
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise _fail(where, "expected a number, a numeric string or null", _describe(value))
        if isinstance(value, float) and math.isnan(value):  # a NaN literal is not null
            raise _fail(where, "expected a finite number within float32 range", _describe(value))
        try:
            number = normalize(value, "numeric")
        except (TypeError, ValueError):
            raise _fail(where, "expected a number, a numeric string or null", _describe(value)) from None
        if number is not None and not (math.isfinite(number) and abs(number) <= FLOAT32_MAX):
            raise _fail(where, "expected a finite number within float32 range", _describe(value))
        return number
    if not isinstance(value, (str, int, float)):  # bool is an int
        raise _fail(where, "expected a string, a number or a boolean (a category) or null", _describe(value))
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(where, "expected a finite number (a category) or null", _describe(value))
    return normalize(value, "categorical")


def check_records(records: Any, columns: list[dict[str, Any]]) -> Any:
    """Raise on the first structural, field or type problem; return the records with every value
    normalised (``normalize``) for the typed ``Record`` model."""
    if not isinstance(records, list):
        raise _fail("records", "expected a list of records (objects keyed by column name)", _describe(records))
    if not 1 <= len(records) <= MAX_RECORDS:
        raise _fail("records", f"expected 1 to {MAX_RECORDS} records per request, got {len(records)}")
    names = [c["name"] for c in columns]
    known = set(names)
    out = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise _fail(f"records[{i}]", "expected an object keyed by column name", _describe(record))
        unknown = [k for k in record if k not in known]
        if unknown:
            raise _fail(f"records[{i}].{unknown[0]}", f"unknown field (expected: {', '.join(names)})")
        clean = {}
        for col in columns:
            if col["name"] not in record:
                raise _fail(f"records[{i}].{col['name']}", "field required (send null for a missing value)")
            clean[col["name"]] = _check_value(col, record[col["name"]], f"records[{i}].{col['name']}")
        out.append(clean)
    return out


def _field(col: dict[str, Any]) -> tuple[Any, Any]:
    name = col["name"]
    if col["type"] == "numeric":
        kind = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX),
                         WithJsonSchema({"anyOf": [{"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX},
                                                   {"type": "string", "pattern": NUMERIC_TEXT_PATTERN}]})]
        return Optional[kind], Field(alias=name, examples=[0.0], description=(
            "numeric: a number or a numeric string (\" 42.5\" as the raw file has it); null, \"\" or NA = "
            "missing (imputed)"))
    cats = col["categories"]
    shown = ", ".join(repr(c) for c in cats[:50]) + (f" ... ({len(cats)} in all)" if len(cats) > 50 else "")
    kind = Annotated[str, Field(strict=True),
                     WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]})]
    return Optional[kind], Field(
        alias=name, examples=cats[:1] or ["a"], json_schema_extra={"x-categories": cats},
        description=f"categorical, one of: {shown}; sent as the raw file has it (stray whitespace is ignored, "
                    f"an integer code may be a number: 2, \"2\" and 2.0 are category \"2\"); any other value = "
                    f"unknown category, null or \"\" = missing")


def records_type(columns: list[dict[str, Any]]) -> Any:
    """The ``records`` request type for these columns (a manifest's ``input.columns``)."""
    # field names are positional (columns need not be identifiers); the aliases are the column names
    fields = {f"c{i}": _field(col) for i, col in enumerate(columns)}
    record = create_model("Record", __config__=ConfigDict(extra="forbid", populate_by_name=False), **fields)
    record.__doc__ = "One row: every training column, by name; null for a missing value."
    example = {c["name"]: (c["categories"][0] if c["type"] == "categorical" and c["categories"] else
                           None if c["type"] == "categorical" else 0.0) for c in columns}
    return Annotated[
        list[record],
        BeforeValidator(lambda value: check_records(value, columns)),
        Field(min_length=1, max_length=MAX_RECORDS, examples=[[example]],
              description=f"1 to {MAX_RECORDS} records; fields: "
                          + ", ".join(f"{c['name']} ({c['type']})" for c in columns)),
    ]


def to_rows(records: list[BaseModel], columns: list[dict[str, Any]]) -> list[list[Any]]:
    """Validated records as rows of normalised values in column order (None = missing)."""
    keys = [f"c{i}" for i in range(len(columns))]
    return [[normalize(getattr(r, k), col["type"]) for k, col in zip(keys, columns)] for r in records]


def tally(rows: list[list[Any]], columns: list[dict[str, Any]]) -> tuple[dict[str, int], dict[str, int]]:
    """(missing values, unknown categories) per column, only columns with a non-zero count; ``rows``
    are normalised (``to_rows``)."""
    missing: dict[str, int] = {}
    unknown: dict[str, int] = {}
    for j, col in enumerate(columns):
        known = set(col.get("categories") or ())
        values = [row[j] for row in rows]
        n_missing = sum(v is None or v == "" for v in values)
        n_unknown = sum(v not in known for v in values if isinstance(v, str) and v != "") \
            if col["type"] == "categorical" else 0
        if n_missing:
            missing[col["name"]] = n_missing
        if n_unknown:
            unknown[col["name"]] = n_unknown
    return missing, unknown


def feeds(rows: list[list[Any]], columns: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """ONNX inputs, one [n, 1] array per column: float32 with NaN, or strings with "" for missing.
    Values are normalised again (idempotent), so raw rows give the same inputs as ``to_rows``' rows."""
    out: dict[str, np.ndarray] = {}
    for j, col in enumerate(columns):
        values = [normalize(row[j], col["type"]) for row in rows]
        if col["type"] == "numeric":
            out[col["name"]] = np.asarray([np.nan if v is None else v for v in values], np.float32).reshape(-1, 1)
        else:
            out[col["name"]] = np.asarray(["" if v is None else v for v in values], dtype=object).reshape(-1, 1)
    return out


# ONNX input type of each column type (NaN / "" mean missing)
GRAPH_TYPES = {"numeric": "tensor(float)", "categorical": "tensor(string)"}


class RecordRequests(RequestSide):
    """``{"records": [...]}``: one object per row keyed by the training columns, values as the raw file
    had them (normalised here exactly as collect did); the graph holds the fitted preprocessing."""

    field = "records"
    max_items = MAX_RECORDS

    def __init__(self, manifest: dict[str, Any], model_dir: Any) -> None:
        super().__init__(manifest, model_dir)
        spec = manifest["input"]
        columns = spec.get("columns") if isinstance(spec, dict) else None
        if spec.get("kind") != "records" or not isinstance(columns, list) or not columns:
            raise ValueError(f"tabular input must be {{'kind': 'records', 'columns': [...]}}, got {spec}")
        for i, col in enumerate(columns):
            ok = isinstance(col, dict) and isinstance(col.get("name"), str) and col.get("type") in GRAPH_TYPES
            if ok and col["type"] == "categorical":
                ok = isinstance(col.get("categories"), list) and all(isinstance(c, str) for c in col["categories"])
            if not ok:
                raise ValueError(f"input.columns[{i}] must be {{name, type: numeric|categorical, categories "
                                 f"(categorical)}}, got {col}")
        if len({c["name"] for c in columns}) != len(columns):
            raise ValueError("input.columns has duplicate names")
        self.columns = columns

    def items_type(self) -> Any:
        return records_type(self.columns)

    def check(self, session: Any) -> None:
        got = {i.name: i.type for i in session.get_inputs()}
        want = {c["name"]: GRAPH_TYPES[c["type"]] for c in self.columns}
        if got != want:
            raise ValueError(f"graph inputs {got} do not match the manifest's columns {want}")

    def to_inputs(self, items: Any) -> Inputs:
        rows = to_rows(items, self.columns)
        missing, unknown = tally(rows, self.columns)
        return Inputs(feeds(rows, self.columns), notes={"missing_values": missing, "unknown_categories": unknown})

    def notes_fields(self) -> dict[str, Any]:
        return {"missing_values": (dict[str, int], Field(description="nulls per column, sent to the missing bucket")),
                "unknown_categories": (dict[str, int], Field(description="categories unseen in training per "
                                                                         "column, sent to the unknown bucket"))}

    def example(self) -> list[Any]:
        return [{c["name"]: None for c in self.columns}] * 2
