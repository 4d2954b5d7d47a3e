"""Request/response schemas of the tabular service, generated from the model's training schema, and
the record -> ONNX input conversion.

``records_type(columns)`` builds the request type from the manifest's ``input.columns``: one
required, nullable field per column (numeric: a finite number, categorical: a string whose train
categories are listed in the field's description and ``x-categories``). As in serving/schemas.py,
``check_records`` first walks the raw JSON and stops at the first problem, so every error names one
record and one field; the typed ``Record`` model then documents the schema (/docs.json).

Nulls are not errors: they go to the column's missing bucket (numeric: the train median). A
category never seen in training goes to the unknown bucket. ``tally`` counts both for the response.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Optional

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model
from pydantic_core import PydanticCustomError

from pipelines.modalities.schema import MAX_BODY_BYTES, ModelMetadata, describe as _describe

MAX_RECORDS = 1024  # per request; a 20-column record is ~0.5 KB of JSON, far below the body limit
FLOAT32_MAX = float(np.finfo(np.float32).max)

__all__ = ["MAX_BODY_BYTES", "MAX_RECORDS", "records_type", "check_records", "tally", "to_rows",
           "feeds", "decide", "RecordPrediction", "Notes", "TabularPredictResponse", "TabularMetadata"]


def _fail(where: str, problem: str, shown: str = "") -> PydanticCustomError:
    return PydanticCustomError("invalid_records", "{where}: {problem}{shown}",
                               {"where": where, "problem": problem, "shown": f", got {shown}" if shown else ""})


def _check_value(col: dict[str, Any], value: Any, where: str) -> None:
    if value is None:
        return
    if col["type"] == "numeric":
        # type() not isinstance(): bool is an int subclass and must not pass as a number
        if type(value) not in (int, float):
            raise _fail(where, "expected a number or null", _describe(value))
        try:
            finite = math.isfinite(value) and abs(float(value)) <= FLOAT32_MAX
        except OverflowError:  # an int beyond float range
            finite = False
        if not finite:
            raise _fail(where, "expected a finite number within float32 range", _describe(value))
    elif not isinstance(value, str):
        raise _fail(where, "expected a string (a category) or null", _describe(value))


def check_records(records: Any, columns: list[dict[str, Any]]) -> Any:
    """Raise on the first structural, field or type problem; return the input as is."""
    if not isinstance(records, list):
        raise _fail("records", "expected a list of records (objects keyed by column name)", _describe(records))
    if not 1 <= len(records) <= MAX_RECORDS:
        raise _fail("records", f"expected 1 to {MAX_RECORDS} records per request, got {len(records)}")
    names = [c["name"] for c in columns]
    known = set(names)
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise _fail(f"records[{i}]", "expected an object keyed by column name", _describe(record))
        unknown = [k for k in record if k not in known]
        if unknown:
            raise _fail(f"records[{i}].{unknown[0]}", f"unknown field (expected: {', '.join(names)})")
        for col in columns:
            if col["name"] not in record:
                raise _fail(f"records[{i}].{col['name']}", "field required (send null for a missing value)")
            _check_value(col, record[col["name"]], f"records[{i}].{col['name']}")
    return records


def _field(col: dict[str, Any]) -> tuple[Any, Any]:
    name = col["name"]
    if col["type"] == "numeric":
        kind = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
        return Optional[kind], Field(alias=name, description="numeric; null = missing (imputed)", examples=[0.0])
    cats = col["categories"]
    shown = ", ".join(repr(c) for c in cats[:50]) + (f" ... ({len(cats)} in all)" if len(cats) > 50 else "")
    return Optional[Annotated[str, Field(strict=True)]], Field(
        alias=name, examples=cats[:1] or ["a"], json_schema_extra={"x-categories": cats},
        description=f"categorical, one of: {shown}; any other string = unknown category, null or \"\" = missing")


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
    """Validated records as rows of values in column order (None = missing)."""
    keys = [f"c{i}" for i in range(len(columns))]
    return [[getattr(r, k) for k in keys] for r in records]


def tally(rows: list[list[Any]], columns: list[dict[str, Any]]) -> tuple[dict[str, int], dict[str, int]]:
    """(missing values, unknown categories) per column, only columns with a non-zero count."""
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
    """ONNX inputs, one [n, 1] array per column: float32 with NaN, or strings with "" for missing."""
    out: dict[str, np.ndarray] = {}
    for j, col in enumerate(columns):
        if col["type"] == "numeric":
            values = [np.nan if row[j] is None else float(row[j]) for row in rows]
            out[col["name"]] = np.asarray(values, np.float32).reshape(-1, 1)
        else:
            values = ["" if row[j] is None else str(row[j]) for row in rows]
            out[col["name"]] = np.asarray(values, dtype=object).reshape(-1, 1)
    return out


def decide(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    """Class index per row: binary with a tuned threshold, classes[1] iff P(classes[1]) >= it; else argmax."""
    if threshold is not None and probs.shape[1] == 2:
        return (probs[:, 1] >= threshold).astype(int)
    return probs.argmax(axis=1)


class RecordPrediction(BaseModel):
    label: Optional[str] = Field(None, description="classification: the predicted class")
    probability: Optional[float] = Field(None, description="classification: probability of `label`")
    probabilities: Optional[list[float]] = Field(None, description="classification: one per class, in the "
                                                                    "order of `classes`")
    value: Optional[float] = Field(None, description="regression: the predicted target, in its own units")


class Notes(BaseModel):
    missing_values: dict[str, int] = Field(description="nulls per column, sent to the missing bucket")
    unknown_categories: dict[str, int] = Field(description="categories unseen in training per column, sent to "
                                                           "the unknown bucket")


class TabularPredictResponse(BaseModel):
    model_name: str
    model_version: Optional[str]
    model_alias: Optional[str]
    task: str
    target: Optional[str]
    classes: Optional[list[str]]
    decision_threshold: Optional[float] = Field(description="binary: `label` is classes[1] iff its probability "
                                                            ">= this; null: the most probable class")
    predictions: list[RecordPrediction]
    notes: Notes


class TabularMetadata(ModelMetadata):
    """What /metadata returns: identity, quality, lineage and input schema of the served model."""

    kind: str
    task: str
    target: Optional[str]
    classes: Optional[list[str]]
    decision_threshold: Optional[float]
