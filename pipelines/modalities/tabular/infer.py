"""Tables for collect: infer column types and the task, validate, and profile.

Written with pandas 3 in mind: text columns arrive as the ``str`` dtype (a ``StringDtype``), not
``object``, so every test goes through ``pandas.api.types`` helpers, never ``dtype == object``.

Values: every category text and every number parsed from text goes through
``pipelines.modalities.tabular.serve.normalize``, the function the service applies to a request's
raw values, so training and serving cannot drift: text is stripped, ``""`` and the CSV NA spellings
are missing, booleans are ``"true"``/``"false"``, whole numbers are ``"2"`` (whether the cell was
``2``, ``2.0``, ``"2"`` or ``" 2 "``). Numeric dtypes are converted to ``float64`` directly.

Column rules (each feature column gets exactly one outcome; thresholds are the constants below):

* **forced** (``data.columns``): ``categorical`` -> every value normalised to its category text;
  ``numeric`` -> numbers (a value that is not a number, or a boolean column: ``DataError`` naming
  the row). A forced column skips the rules below except **empty**: never dropped as an ID or a
  constant, never re-typed as a code. A name not in the table is a ``DataError``.
* **empty** - every value missing: ``DataError`` (name it in ``data.drop`` to leave it out).
* **boolean** (bool dtype, or True/False objects) -> categorical ``"true"``/``"false"``.
* **text** (normalised: stripped, ``""``/NA missing). If at least ``NUMERIC_TEXT_SHARE`` (95 %) of
  its values parse as numbers but some don't, it is a numeric column with junk: ``DataError`` naming
  the first bad row and the column. If all parse, it is treated as numbers below; otherwise it is
  categorical text ("Yes"/"No" included, kept as written).
* **identifier-like** columns are dropped, with a warning and a ``profile["dropped"]`` entry:
  no missing values, every value distinct (a row that exactly repeats another row may repeat its
  ID: a duplicated record is not a second customer), and either the name looks like an ID (``id``,
  ``customer_id``, ``customerID``, ``uuid``, ``key``...; needs >= 2 rows) or the table has at least
  ``MIN_ROWS_FOR_ID`` rows and the column is text, or whole numbers in strictly increasing order
  (a row number / auto-increment key). Columns with fractional numbers are never IDs.
* **constant** columns (one value, none missing) are dropped the same way: they carry nothing.
* **dates written as text** (``2024-01-31``, ``31/01/2024``, ``2024-01-31 08:15:00``...: every
  present value) are dropped the same way, as date/time dtypes are: not used yet.
* **low-cardinality whole numbers** -> categorical (``"3"``): all values whole, 2 to
  ``MAX_CODE_VALUES`` (10) distinct values, each value seen twice on average, and spaced like codes
  or counts (average gap between sorted distinct values <= ``MAX_CODE_GAP``, 10), not like
  measurements ({0, 1000, 5000} stays numeric).
* everything else numeric -> ``float64`` (missing = NaN); infinite values are a ``DataError``.

Task rule (``data.task: auto``): a text or boolean target is classification; a numeric target is
classification when it holds whole numbers with at most ``MAX_AUTO_CLASSES`` (20) distinct values
that are also at most ``AUTO_CLASS_SHARE`` (5 %) of the rows (two values are always enough),
otherwise regression. Rows whose target is missing are dropped (logged, counted in the profile).

Errors are ``DataError`` naming the origin (file or source), the column and, where one row is at
fault, its 0-based data row (the header is not a row).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pandas.api import types as pdt

from pipelines.files import DataError
from pipelines.labels import case_groups, describe_groups, label_spellings
from pipelines.modalities.tabular.serve import normalize
from pipelines.params import DataParams, section_dict
from pipelines.sources import NO_TARGET, Table

log = logging.getLogger(__name__)

NUMERIC_TEXT_SHARE = 0.95
MIN_ROWS_FOR_ID = 20
MAX_CODE_VALUES = 10
MAX_CODE_GAP = 10.0
MAX_AUTO_CLASSES = 20
AUTO_CLASS_SHARE = 0.05
MAX_PROFILE_CATEGORIES = 1000

_ID_NAME = re.compile(r"^(id|uuid|guid|key|index|row_?(id|num|number)?)$|[_ .-](id|uuid|guid|key)$", re.IGNORECASE)
_CAMEL_ID = re.compile(r"[a-z0-9](Id|ID)$")
# dates and times as files write them: 2024-01-31, 2024/1/31, 31/01/2024, 31.01.2024, with an optional time
_DATE_TEXT = re.compile(r"(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/]\d{1,2}[-/]\d{2}(?:\d{2})?|\d{1,2}\.\d{1,2}\.\d{4})"
                        r"(?:[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:Z|[AaPp][Mm]|[+-]\d{2}:?\d{2})?)?")


@dataclass
class PreparedTable:
    """A validated table ready to write: features (original order) then the target, typed."""

    frame: pd.DataFrame
    target: str
    task: str
    origin: str
    kinds: dict[str, str]  # feature name -> "numeric" | "categorical"
    dropped: list[dict[str, str]] = field(default_factory=list)
    dropped_rows_missing_target: int = 0
    checks: list[str] = field(default_factory=list)
    forced: dict[str, str] = field(default_factory=dict)  # data.columns


def prepare_table(table: Table, params: DataParams) -> PreparedTable:
    """Type, validate and clean ``table``; raise ``DataError`` naming file/row/column on bad data."""
    where, frame = table.origin, table.frame.reset_index(drop=True)
    frame.columns = [str(c) for c in frame.columns]
    _check_shape(frame, table.target, params.drop, where, params.columns)
    checks = ["non_empty", "target_present"]
    if table.target == NO_TARGET:  # no labels (an anomaly or embedding task): nothing to type or check
        target, task, checks = frame[NO_TARGET].astype(str), params.task, ["non_empty", "no_labels"]
    else:
        target, task = _target(frame[table.target], table.target, where, params.task, table.task)
    missing = target.isna()
    if missing.any():
        log.warning("%s: dropping %d of %d rows with a missing target %r (first: row %d)",
                    where, int(missing.sum()), len(frame), table.target, int(missing.idxmax()))
    keep = ~missing
    checks.append("target_not_all_missing")
    out: dict[str, pd.Series] = {}
    kinds: dict[str, str] = {}
    dropped = [{"name": c, "reason": "listed in data.drop"} for c in params.drop]
    repeats = _Repeats(frame[keep])
    for name in frame.columns:
        if name == table.target or name in params.drop:
            continue
        kind, values = _feature(frame[name][keep], name, where, params.columns.get(name), repeats)
        if kind == "drop":
            log.warning("%s: dropping column %r: %s", where, name, values)
            dropped.append({"name": name, "reason": values})
        else:
            out[name], kinds[name] = values, kind
            if kind == "categorical":
                _case_warning(values, name, where)
    if not out:
        raise DataError(f"{where}: no feature columns left (dropped: "
                        f"{', '.join(d['name'] + ' (' + d['reason'] + ')' for d in dropped) or 'none'})")
    checks += ["no_empty_columns", "numeric_columns_clean", "features_finite", "has_features"]
    target = target[keep]
    if table.target != NO_TARGET:
        checks += _check_target(target, table.target, task, where)
    out[table.target] = target
    result = pd.DataFrame(out).reset_index(drop=True)
    return PreparedTable(result, table.target, task, where, kinds, dropped, int(missing.sum()), checks,
                         dict(params.columns))


def _check_shape(frame: pd.DataFrame, target: str, drop: tuple[str, ...], where: str,
                 columns: dict[str, str] | None = None) -> None:
    if frame.shape[1] == 0:
        raise DataError(f"{where}: table has no columns")
    if len(frame) == 0:
        raise DataError(f"{where}: table is empty (0 rows)")
    dups = sorted(set(frame.columns[frame.columns.duplicated()]))
    if dups:
        raise DataError(f"{where}: duplicate column name(s) {dups}")
    available = ", ".join(map(repr, frame.columns[:50])) + (" ..." if frame.shape[1] > 50 else "")
    if target not in frame.columns:
        raise DataError(f"{where}: column {target!r} (data.target) not found; available columns: {available}")
    for i, name in enumerate(drop):
        if name not in frame.columns:
            raise DataError(f"{where}: column {name!r} (data.drop[{i}]) not found; available columns: {available}")
    for name in columns or {}:
        if name not in frame.columns:
            raise DataError(f"{where}: column {name!r} (data.columns.{name}) not found; available columns: {available}")


# ---------------------------------------------------------------- values


def _is_boolean(s: pd.Series) -> bool:
    return pdt.is_bool_dtype(s) or (pdt.is_object_dtype(s) and pdt.infer_dtype(s, skipna=True) == "boolean")


def _bool_text(s: pd.Series) -> pd.Series:
    return s.map(lambda v: v if pd.isna(v) else normalize(v, "categorical")).astype("string")


_UNSEEN = object()


def _normalized(s: pd.Series, kind: str, name: str, where: str, bad: list[Any] | None = None) -> pd.Series:
    """``normalize(value, kind)`` of every value (once per distinct value): ``string`` (categorical)
    or ``float64`` (numeric), missing as NA/NaN. A value ``normalize`` rejects raises a ``DataError``
    naming its (first) row, or, when ``bad`` is a list, is appended to it as ``(row, value)`` and left
    missing. Distinct values come from ``pd.factorize`` (C speed: 1 M rows in ~0.1 s) unless the column
    mixes Python types (JSONL: ``1``, ``1.0`` and ``True`` are equal keys there, but different cells)."""
    if s.dtype == object and pdt.infer_dtype(s, skipna=True) not in ("string", "empty"):
        return _normalized_by_row(s, kind, name, where, bad)
    codes, uniques = pd.factorize(s, use_na_sentinel=True)
    first_rows: np.ndarray | None = None
    out: list[Any] = []
    for j, value in enumerate(uniques):
        try:
            out.append(normalize(value, kind))
        except (TypeError, ValueError) as exc:
            if first_rows is None:  # uniques are in order of first appearance: the first bad is the first row
                present = np.flatnonzero(codes >= 0)
                first_rows = present[np.unique(codes[present], return_index=True)[1]]
            row = s.index[first_rows[j]]
            if bad is None:
                raise DataError(f"{where}: row {row}, column {name!r}: {exc} (leave the column out with "
                                f"data.drop)") from None
            bad.append((row, value))
            out.append(None)
    out.append(None)  # code -1: missing
    if kind == "numeric":
        table = np.array([np.nan if v is None else v for v in out], dtype="float64")
        return pd.Series(table[codes], index=s.index)
    return pd.Series(np.array(out, dtype=object)[codes], index=s.index, dtype="object").astype("string")


def _normalized_by_row(s: pd.Series, kind: str, name: str, where: str, bad: list[Any] | None = None) -> pd.Series:
    """``_normalized`` for a column of mixed Python objects: a cache keyed by (type, value)."""
    missing = s.isna().to_numpy()
    out: list[Any] = [None] * len(s)
    cache: dict[tuple[type, Any], Any] = {}
    for i, (row, value) in enumerate(zip(s.index, s.array)):
        if missing[i]:
            continue
        try:
            key: tuple[type, Any] | None = (type(value), value)
            hit = cache.get(key, _UNSEEN)
        except TypeError:  # unhashable (a list from JSONL)
            key, hit = None, _UNSEEN
        if hit is _UNSEEN:
            try:
                hit = normalize(value, kind)
            except (TypeError, ValueError) as exc:
                if bad is None:
                    raise DataError(f"{where}: row {row}, column {name!r}: {exc} (leave the column out with "
                                    f"data.drop)") from None
                bad.append((row, value))
                hit = None
            if key is not None:
                cache[key] = hit
        out[i] = hit
    if kind == "numeric":
        return pd.Series(np.array([np.nan if v is None else v for v in out], dtype="float64"), index=s.index)
    return pd.Series(out, index=s.index, dtype="object").astype("string")


def _text(s: pd.Series) -> pd.Series:
    """Text as the ``string`` dtype, stripped, with ``""`` as missing."""
    text = s.astype("string").str.strip()
    return text.mask(text == "")


def _parse_numbers(text: pd.Series, name: str, where: str) -> pd.Series | None:
    """``float64`` if every value of ``text`` is a number; ``None`` if it is genuinely text.

    Raises when it is mostly numbers (>= ``NUMERIC_TEXT_SHARE``) with a few that are not.
    """
    bad: list[Any] = []  # one (row, value) per distinct value that is not a number
    numbers = _normalized(text, "numeric", name, where, bad)  # the features' rule: "$250,000" is a number
    if not bad:
        return numbers
    present = int(numbers.notna().sum()) + len(bad)  # as _text_values counts
    if 1 - len(bad) / present >= NUMERIC_TEXT_SHARE:
        row, value = bad[0]
        raise DataError(
            f"{where}: row {row}, column {name!r}: non-numeric value {value!r} in a numeric column "
            f"({len(bad)} of {present} values do not parse as numbers)"
        )
    return None


def _whole(numbers: pd.Series) -> bool:
    present = numbers.dropna()
    return bool(len(present)) and bool(np.all(np.mod(present.to_numpy(), 1) == 0))


def _label_text(numbers: pd.Series) -> pd.Series:
    """Numbers as class labels: ``3.0`` -> ``"3"``, ``0.5`` -> ``"0.5"`` (the category rule of ``normalize``)."""
    return numbers.map(lambda v: v if pd.isna(v) else normalize(v, "categorical")).astype("string")


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_finite(numbers: pd.Series, name: str, where: str) -> None:
    values = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.isinf(values)
    if bad.any():
        row = numbers.index[int(np.argmax(bad))]
        raise DataError(f"{where}: row {row}, column {name!r}: non-finite value {numbers[row]} "
                        f"({int(bad.sum())} non-finite values)")
    # the model computes in float32: 1e308 would become inf there (and NaN after standardising)
    huge = np.abs(np.nan_to_num(values)) > FLOAT32_MAX
    if huge.any():
        row = numbers.index[int(np.argmax(huge))]
        raise DataError(f"{where}: row {row}, column {name!r}: value {numbers[row]} is outside the float32 range "
                        f"the model computes in (|x| <= {FLOAT32_MAX:.3g}; {int(huge.sum())} such values)")


# ---------------------------------------------------------------- features


class _Repeats:
    """Which rows exactly repeat an earlier row of the table (all columns), computed once and only
    when a column could be an ID but for repeated values."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame, self._mask = frame, None

    def mask(self) -> np.ndarray:
        if self._mask is None:
            try:
                self._mask = self.frame.duplicated(keep="first").to_numpy()
            except TypeError:  # an unhashable cell (a JSONL list): its column's own check names it
                self._mask = np.zeros(len(self.frame), dtype=bool)
        return self._mask


def _feature(s: pd.Series, name: str, where: str, forced: str | None = None,
             repeats: _Repeats | None = None) -> tuple[str, Any]:
    """``("numeric", float64)``, ``("categorical", string)`` or ``("drop", reason)``; ``forced`` is
    the column's ``data.columns`` type, if any; ``repeats``: the table's exactly repeated rows."""
    if pdt.is_datetime64_any_dtype(s) or pdt.is_timedelta64_dtype(s):
        if forced:
            raise DataError(f"{where}: column {name!r}: date/time dtype {s.dtype} cannot be {forced} "
                            f"(data.columns.{name}; date/time columns are not used yet)")
        return "drop", f"unsupported dtype {s.dtype} (date/time columns are not used yet)"
    textual = pdt.is_string_dtype(s) or pdt.is_object_dtype(s) or isinstance(s.dtype, pd.CategoricalDtype)
    if forced == "categorical":
        values: pd.Series = _normalized(s, "categorical", name, where)
    elif forced == "numeric":
        if _is_boolean(s):
            raise DataError(f"{where}: column {name!r}: boolean values cannot be numeric (data.columns.{name}: "
                            f"numeric; use categorical)")
        if pdt.is_numeric_dtype(s):
            values = pd.Series(s.to_numpy(dtype="float64", na_value=np.nan), index=s.index)
        elif textual:
            bad: list[Any] = []
            values = _normalized(s, "numeric", name, where, bad)
            if bad:
                row, value = bad[0]
                raise DataError(f"{where}: row {row}, column {name!r}: non-numeric value {value!r} in a numeric "
                                f"column (data.columns.{name}: numeric; {len(bad)} values do not parse as numbers)")
        else:
            raise DataError(f"{where}: column {name!r}: unsupported dtype {s.dtype} (data.columns.{name})")
    elif _is_boolean(s):
        values = _bool_text(s)
    elif pdt.is_numeric_dtype(s):
        values = pd.Series(s.to_numpy(dtype="float64", na_value=np.nan), index=s.index)
    elif textual:
        values = _text_values(s, name, where)
    else:
        return "drop", f"unsupported dtype {s.dtype}"
    if values.isna().all():
        raise DataError(f"{where}: column {name!r}: every value is missing (leave it out with data.drop)")
    if not forced:
        reason = _date_reason(values, name) or _drop_reason(values, name, repeats)
        if reason:
            return "drop", reason
    if pdt.is_string_dtype(values):
        return "categorical", values
    _check_finite(values, name, where)
    if not forced and _is_code(values):
        return "categorical", _normalized(values, "categorical", name, where)
    return "numeric", values


def _text_values(s: pd.Series, name: str, where: str) -> pd.Series:
    """A text column: ``float64`` if every present value is a number, else category texts; raises
    when most (>= ``NUMERIC_TEXT_SHARE``) but not all values are numbers."""
    bad: list[Any] = []
    numbers = _normalized(s, "numeric", name, where, bad)
    if not bad:
        return numbers
    present = int(numbers.notna().sum()) + len(bad)
    if 1 - len(bad) / present >= NUMERIC_TEXT_SHARE:
        row, value = bad[0]
        shown = value.strip() if isinstance(value, str) else value
        raise DataError(
            f"{where}: row {row}, column {name!r}: non-numeric value {shown!r} in a numeric column "
            f"({len(bad)} of {present} values do not parse as numbers; data.columns.{name}: categorical "
            f"keeps them as categories)"
        )
    return _normalized(s, "categorical", name, where)


def _date_reason(values: pd.Series, name: str) -> str | None:
    """Dates written as text are left out as a date/time dtype is (as categories every day would be
    a category the model never sees again); ``data.columns: {name: categorical}`` keeps them."""
    if not pdt.is_string_dtype(values):
        return None
    distinct = values.dropna().unique()
    if not len(distinct) or not all(_DATE_TEXT.fullmatch(v) for v in distinct):
        return None
    return (f"dates/times written as text (e.g. {distinct[0]!r}): date/time columns are not used yet "
            f"(data.columns.{name}: categorical keeps them as categories)")


def _drop_reason(values: pd.Series, name: str, repeats: _Repeats | None = None) -> str | None:
    n, distinct = len(values), values.nunique()
    if distinct == 1 and not values.isna().any():
        return f"constant: the single value {values.iloc[0]!r} in every row"
    if values.isna().any() or n < 2 or distinct < n / 2:
        return None
    rows = "rows"
    if distinct != n:  # an ID still, if only exact duplicate rows repeat their record's value
        if repeats is None or not (repeated := repeats.mask()).any():
            return None
        values = values[~repeated]
        n = len(values)
        if values.nunique() != n:
            return None
        rows = f"distinct rows ({int(repeated.sum())} exact duplicate rows repeat theirs)"
    named = bool(_ID_NAME.search(name) or _CAMEL_ID.search(name))
    if pdt.is_string_dtype(values):
        if named or n >= MIN_ROWS_FOR_ID:
            return f"identifier-like: a distinct text value in each of the {n} {rows}"
        return None
    if not _whole(values):
        return None  # a continuous measurement, however unique
    if named:
        return f"identifier-like: ID-named with a distinct whole number in each of the {n} {rows}"
    if n >= MIN_ROWS_FOR_ID and values.is_monotonic_increasing:
        return f"identifier-like: distinct whole numbers in increasing order in all {n} {rows} (a row number)"
    return None


def _is_code(numbers: pd.Series) -> bool:
    """Whole numbers with few, repeated, closely spaced values: codes or small counts."""
    if not _whole(numbers):
        return False
    distinct = np.sort(numbers.dropna().unique())
    if not 2 <= len(distinct) <= MAX_CODE_VALUES or len(distinct) * 2 > numbers.notna().sum():
        return False
    return (distinct[-1] - distinct[0]) / (len(distinct) - 1) <= MAX_CODE_GAP


# ---------------------------------------------------------------- target


def _target(s: pd.Series, name: str, where: str, task: str, known: str | None) -> tuple[pd.Series, str]:
    """The target as class-label text (classification) or ``float64`` (regression), and the task."""
    labels: pd.Series | None = None
    numbers: pd.Series | None = None
    if _is_boolean(s):
        labels = _bool_text(s)
    elif pdt.is_numeric_dtype(s):
        numbers = pd.Series(s.to_numpy(dtype="float64", na_value=np.nan), index=s.index)
    elif pdt.is_string_dtype(s) or pdt.is_object_dtype(s) or isinstance(s.dtype, pd.CategoricalDtype):
        labels = _text(s)
        if labels.notna().any():
            numbers = _parse_numbers(labels, name, where)
            labels = None if numbers is not None else labels
    else:
        raise DataError(f"{where}: column {name!r}: unsupported target dtype {s.dtype}")
    if (labels if labels is not None else numbers).isna().all():
        raise DataError(f"{where}: column {name!r}: target is missing in every row")
    if task == "auto":
        task = known or _infer_task(labels, numbers, name, where)
    if _takes_labels(task):
        return _one_spelling(labels if labels is not None else _label_text(numbers), name, where), task
    if numbers is None:
        present = labels.dropna()
        raise DataError(f"{where}: row {present.index[0]}, column {name!r}: regression needs a numeric target, "
                        f"got {present.iloc[0]!r} (data.task: regression)")
    return numbers, task


def _one_spelling(labels: pd.Series, name: str, where: str) -> pd.Series:
    """Class labels with each class in one spelling: ``"YES"`` and ``"yes"`` become the more frequent
    ``"Yes"`` (``pipelines.labels``), with a warning naming them."""
    spelling = label_spellings(labels.value_counts().to_dict(), where, name)
    return labels.replace(spelling) if spelling else labels


def _case_warning(values: pd.Series, name: str, where: str) -> None:
    """Warn about categories that differ only in letter case: they stay separate (the service takes a
    request's category as written), so the file is where to fix them."""
    counts = values.value_counts().to_dict()
    groups = case_groups(counts)
    if groups:
        log.warning("%s: column %r: categories that differ only in letter case stay separate categories "
                    "(a request's value is taken as written): %s; if they are one, fix the file", where, name,
                    describe_groups(groups, counts))


def _infer_task(labels: pd.Series | None, numbers: pd.Series | None, name: str, where: str) -> str:
    if numbers is None:
        log.info("%s: target %r is text/boolean: task classification", where, name)
        return "classification"
    present = numbers.dropna()
    distinct = present.nunique()
    few = distinct <= MAX_AUTO_CLASSES and (distinct <= 2 or distinct <= AUTO_CLASS_SHARE * len(present))
    task = "classification" if _whole(present) and few else "regression"
    log.info("%s: target %r has %d distinct %s values in %d rows: task %s (set data.task to override)",
             where, name, distinct, "whole" if _whole(present) else "fractional", len(present), task)
    return task


def _takes_labels(task: str) -> bool:
    """Whether ``task`` reads its target as class labels (classification, anomaly, ...) or numbers."""
    from pipelines.plugins import get_task

    return get_task(task).target_kind == "labels"


def _check_target(target: pd.Series, name: str, task: str, where: str) -> list[str]:
    if _takes_labels(task):
        classes = sorted(target.unique())
        if len(classes) < 2:
            raise DataError(f"{where}: column {name!r}: a single class ({classes[0]!r}), need at least 2")
        return ["at_least_two_classes"]
    _check_finite(target, name, where)
    if target.nunique() < 2:
        raise DataError(f"{where}: column {name!r}: constant target ({target.iloc[0]}), nothing to learn")
    return ["target_finite", "target_varies"]


# ---------------------------------------------------------------- profile and hash


def frame_hash(frame: pd.DataFrame) -> str:
    """Content hash of a collected table (names, dtypes, values), independent of pandas' hashing."""
    h = hashlib.sha256()
    for name in frame.columns:
        col = frame[name]
        h.update(f"{name}\0{col.dtype}\0{len(col)}\0".encode())
        if pdt.is_float_dtype(col):
            h.update(np.ascontiguousarray(col.to_numpy(dtype="<f8", na_value=np.nan)).tobytes())
        elif isinstance(col.dtype, pd.StringDtype):  # the same bytes as below, without a Python loop
            h.update("\0".join(col.to_numpy(dtype=object, na_value="\1").tolist()).encode())
        else:
            h.update("\0".join("\1" if pd.isna(v) else str(v) for v in col).encode())
        h.update(b"\2")
    return h.hexdigest()


def _column_profile(col: pd.Series, kind: str, forced: bool = False) -> dict[str, Any]:
    info: dict[str, Any] = {"name": col.name, "type": kind, "forced": forced, "dtype": str(col.dtype),
                            "missing_rate": round(float(col.isna().mean()), 6), "cardinality": int(col.nunique())}
    if kind == "categorical":
        categories = sorted(col.dropna().unique())
        info["categories"] = [str(c) for c in categories[:MAX_PROFILE_CATEGORIES]]
        if len(categories) > MAX_PROFILE_CATEGORIES:
            info["categories_truncated"] = True  # the first MAX_PROFILE_CATEGORIES in sorted order
    else:
        info.update(min=float(col.min()), max=float(col.max()), mean=float(col.mean()))
    return info


def table_profile(prep: PreparedTable, params: DataParams, task: Any) -> dict[str, Any]:
    """profile.json for a table: schema per column, what was dropped, target summary (by ``task``,
    a ``pipelines.plugins.Task``), hash, checks."""
    frame, target = prep.frame, prep.frame[prep.target]
    return {
        "source": prep.origin, "task": prep.task, "target": prep.target, "rows": int(len(frame)),
        "columns": [_column_profile(frame[name], kind, name in prep.forced) for name, kind in prep.kinds.items()],
        "dropped": prep.dropped, "dropped_rows_missing_target": prep.dropped_rows_missing_target,
        **task.target_profile(target.to_numpy()),
        "data_hash": frame_hash(frame), "checks_passed": prep.checks, "params": section_dict(params),
        "value_range": None,
        "schema": {"features": {"columns": len(prep.kinds)}, "target": {"name": prep.target, "dtype": str(target.dtype)}},
    }
