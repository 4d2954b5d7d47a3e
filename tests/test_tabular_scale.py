"""Collect at scale: the factorized per-distinct-value normalisation and the vectorised hash give exactly
what the per-row versions gave (same values, same first bad row, same ``bad`` list, same bytes)."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from pandas.api import types as pdt

from pipelines.files import DataError
from pipelines.modalities.tabular.infer import _normalized, _normalized_by_row, frame_hash

MESSY = [" Male", "Male", "2", " 2 ", "2.0", "yes", "No", "", "NA", None, "1e3", "abc", " x ", "3.5", "nan", "-0"]


def columns() -> dict[str, pd.Series]:
    rng = np.random.default_rng(0)
    picks = rng.choice(np.array(MESSY, dtype=object), 500)
    numeric_text = rng.choice(np.array(["1", " 2.5", "", None, "-3", "4e1"], dtype=object), 500)
    return {
        "object_text": pd.Series(picks, dtype=object),
        "string_text": pd.Series(picks, dtype="string"),
        "numeric_text": pd.Series(numeric_text, dtype="string"),
        "floats": pd.Series(np.where(rng.random(500) < 0.1, np.nan, rng.integers(0, 5, 500).astype(float))),
        "mixed_objects": pd.Series(rng.choice(np.array([1, 1.0, True, "1", None, 2.5, False, "a"], dtype=object), 500),
                                   dtype=object),
        "all_missing": pd.Series([None] * 10, dtype="string"),
        "offset_index": pd.Series(picks[:50], index=np.arange(100, 150), dtype="string"),
    }


@pytest.mark.parametrize("kind", ["categorical", "numeric"])
@pytest.mark.parametrize("name", list(columns()))
def test_factorized_normalisation_equals_the_per_row_one(name, kind):
    s = columns()[name]
    bad_new: list = []
    bad_old: list = []
    got = _normalized(s, kind, name, "t.csv", bad_new)
    want = _normalized_by_row(s, kind, name, "t.csv", bad_old)
    pd.testing.assert_series_equal(got, want)
    assert bad_new == bad_old
    if bad_old:  # without a bad list: the same error, naming the same first row
        with pytest.raises(DataError) as new_err:
            _normalized(s, kind, name, "t.csv")
        with pytest.raises(DataError) as old_err:
            _normalized_by_row(s, kind, name, "t.csv")
        assert str(new_err.value) == str(old_err.value)


def test_frame_hash_unchanged_by_the_vectorised_string_path():
    def per_value_hash(frame: pd.DataFrame) -> str:  # the previous implementation
        h = hashlib.sha256()
        for name in frame.columns:
            col = frame[name]
            h.update(f"{name}\0{col.dtype}\0{len(col)}\0".encode())
            if pdt.is_float_dtype(col):
                h.update(np.ascontiguousarray(col.to_numpy(dtype="<f8", na_value=np.nan)).tobytes())
            else:
                h.update("\0".join("\1" if pd.isna(v) else str(v) for v in col).encode())
            h.update(b"\2")
        return h.hexdigest()

    cols = columns()
    frame = pd.DataFrame({"a": cols["string_text"], "b": cols["floats"], "c": cols["object_text"],
                          "d": pd.Series(np.arange(500))})
    assert frame_hash(frame) == per_value_hash(frame)


@pytest.mark.slow
def test_scale_benchmark_runs_end_to_end_on_a_small_table(subprocess_env):
    """benchmarks/scale_bench.py (README "Scale") on 3,000 rows: every stage runs under `dvc repro -s`."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale_bench.py"), "--rows", "3000",
                           "--epochs", "1", "--batch-size", "256", "--build-bento", "false"],
                          env=subprocess_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| **whole pipeline** |" in proc.stdout and "| deploy |" in proc.stdout
