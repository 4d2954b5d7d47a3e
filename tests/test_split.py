import json

import numpy as np
import pytest

from pipelines import split
from pipelines.data import load_split
from pipelines.files import DataError, load_arrays, save_arrays, write_json
from tests.conftest import make_params


def test_digits_split_is_stratified_disjoint_and_hashed(digits_split):
    info = json.loads((digits_split / "split.json").read_text())
    sizes = info["sizes"]
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == round(0.2 * 1797) and sizes["val"] == round(0.15 * 1797)
    idx = {n: load_arrays(digits_split / f"{n}.npz", "index")["index"] for n in ("train", "val", "test")}
    assert not set(idx["train"]) & set(idx["val"]) and not set(idx["train"]) & set(idx["test"])
    assert info["leakage"]["index_overlap"] == {"train&val": 0, "train&test": 0, "val&test": 0}
    # stratified: every class's share in test is within one row of its share overall
    total = np.sum([info["class_counts"][n] for n in ("train", "val", "test")], axis=0)
    expected = total * sizes["test"] / 1797
    assert np.all(np.abs(np.array(info["class_counts"]["test"]) - expected) <= 1.0)
    assert set(info["hashes"]) == {"train", "val", "test"} and all(len(h) == 64 for h in info["hashes"].values())


def test_preprocess_is_fitted_on_train_only(digits_split):
    state = json.loads((digits_split / "preprocess.json").read_text())
    raw_train = load_arrays(digits_split / "train.npz", "X")["X"]
    assert state["rows"] == len(raw_train)
    assert state["mean"] == pytest.approx(float(raw_train.mean()), rel=1e-5)
    X, _ = load_split(digits_split, "train")
    assert abs(float(X.mean())) < 1e-4 and float(X.std()) == pytest.approx(1.0, abs=1e-3)


def test_same_seed_same_hashes_other_seed_differs(tmp_path, digits_split):
    collect_dir = digits_split.parent / "collect"
    split.run(make_params(), collect_dir, tmp_path / "a")
    split.run(make_params(split={"seed": 1}), collect_dir, tmp_path / "b")
    a, b, ref = (json.loads((d / "split.json").read_text())["hashes"] for d in (tmp_path / "a", tmp_path / "b", digits_split))
    assert a == ref and a != b


def _collect_dir(tmp_path, X, y):
    d = tmp_path / "collect"
    d.mkdir()
    save_arrays(d / "data.npz", X=X, y=y)
    write_json(d / "profile.json", {"task": "classification", "kind": "image", "classes": ["0", "1"],
                                    "data_hash": "x", "params": {}, "value_range": None})
    return d


def test_cross_split_duplicates_are_reported(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 17, size=(60, 1, 2, 2)).astype(np.float32)
    X[30:] = X[:30]  # every row twice
    y = np.tile(np.arange(2), 30)
    y[30:] = y[:30]
    split.run(make_params(), _collect_dir(tmp_path, X, y), tmp_path / "split")
    leak = json.loads((tmp_path / "split" / "split.json").read_text())["leakage"]
    assert leak["cross_split_duplicates"] > 0
    assert leak["duplicate_examples"] and all(len(e["rows"]) == 2 for e in leak["duplicate_examples"])


def test_too_small_class_cannot_be_stratified(tmp_path):
    X = np.zeros((40, 1, 2, 2), np.float32) + np.arange(40)[:, None, None, None]
    y = np.array([0] * 38 + [1] * 2)
    # named by the target column and the class's own label, with its count
    with pytest.raises(DataError, match=r"^class\(es\): \{'1': 2\} \(value: rows\) have fewer than 3 rows"):
        split.run(make_params(), _collect_dir(tmp_path, X, y), tmp_path / "split")
    assert not (tmp_path / "split").exists()


def test_missing_input_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"collect/profile\.json: missing"):
        split.run(make_params(), tmp_path / "collect", tmp_path / "split")

