import json

import numpy as np
import pytest

from pipelines import collect
from pipelines.files import DataError, load_arrays
from pipelines.params import ParamsError
from pipelines.sources import Dataset, register_source, unregister_source
from tests.conftest import make_params


def test_digits_collect_writes_dataset_and_profile(tmp_path):
    out = tmp_path / "collect"
    summary = collect.run(make_params(), out)
    arrays = load_arrays(out / "data.npz", "X", "y")
    assert arrays["X"].shape == (1797, 1, 8, 8) and arrays["X"].dtype == np.float32
    prof = json.loads((out / "profile.json").read_text())
    assert prof["rows"] == summary["rows"] == 1797
    assert prof["num_classes"] == 10 and sum(prof["class_balance"].values()) == 1797
    assert {"features_finite", "features_in_range", "at_least_two_classes"} <= set(prof["checks_passed"])
    assert prof["schema"]["features"]["shape"] == [1, 8, 8]
    assert sorted(p.name for p in out.iterdir()) == ["data.npz", "profile.json"]


def _images(n=30, classes=3):
    rng = np.random.default_rng(0)
    return rng.uniform(0, 16, size=(n, 1, 8, 8)).astype(np.float32), np.arange(n) % classes



@pytest.fixture()
def bad_source():
    """Registers a real source under test:bad whose data each test corrupts."""
    holder = {}

    @register_source("test:bad", modality="image")
    def _src(params):
        X, y = holder["data"]
        return Dataset(X=X, y=y, kind="image", origin="test:bad", value_range=(0.0, 16.0))

    yield holder
    unregister_source("test:bad")


def _corrupt(kind):
    X, y = _images()
    if kind == "nan":
        X[4, 0, 2, 3] = np.nan
    elif kind == "inf":
        X[7, 0, 0, 1] = np.inf
    elif kind == "empty":
        X, y = X[:0], y[:0]
    elif kind == "single_class":
        y = np.zeros_like(y)
    elif kind == "float_target":
        y = y.astype(np.float64) + 0.5
    elif kind == "length":
        y = y[:-1]
    elif kind == "range":
        X[2, 0, 1, 1] = 255.0
    elif kind == "text_target":
        y = np.array(["a"] * len(y))
    return X, y


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("nan", r"row 4, column 19: non-finite value nan"),
        ("inf", r"row 7, column 1: non-finite value inf"),
        ("empty", r"dataset is empty"),
        ("single_class", r"column target: a single class"),
        ("float_target", r"row 0, column target: classification label 0.5 is not an integer"),
        ("length", r"30 feature rows but 29 targets"),
        ("range", r"row 2, column 9: value 255.0 outside \[0.0, 16.0\]"),
        ("text_target", r"target must be numeric"),
    ],
)
def test_bad_data_is_named_and_writes_nothing(tmp_path, bad_source, kind, message):
    bad_source["data"] = _corrupt(kind)
    out = tmp_path / "collect"
    with pytest.raises(DataError, match=f"test:bad: {message}"):
        collect.run(make_params(data={"source": "test:bad"}), out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temp dir left behind either


def test_unknown_source_lists_valid_ones(tmp_path):
    with pytest.raises(ParamsError, match=r"data\.source: unknown source 'csv:nope' \(valid: .*sklearn:digits"):
        collect.run(make_params(data={"source": "csv:nope"}), tmp_path / "c")


def test_digits_refuses_regression(tmp_path):
    with pytest.raises(ParamsError, match="data.task"):
        collect.run(make_params(data={"task": "regression"}), tmp_path / "c")


def test_failed_rewrite_keeps_previous_output(tmp_path, bad_source):
    out = tmp_path / "collect"
    bad_source["data"] = _images()
    collect.run(make_params(data={"source": "test:bad"}), out)
    before = (out / "profile.json").read_text()
    bad_source["data"] = _corrupt("nan")
    with pytest.raises(DataError):
        collect.run(make_params(data={"source": "test:bad"}), out)
    assert (out / "profile.json").read_text() == before
