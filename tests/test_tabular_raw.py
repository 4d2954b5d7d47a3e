"""One normalisation of raw values for training and serving (``serve.normalize``), and
``data.columns``: collect's category texts are exactly what the service makes of a raw cell, so a
row sent as the raw file has it (stray whitespace, integer codes, numeric strings) gets the
pipeline's own prediction."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipelines import collect
from pipelines.files import DataError
from pipelines.modalities.tabular.infer import prepare_table
from pipelines.modalities.tabular.serve import check_records, feeds, normalize, records_type, tally, to_rows
from pipelines.params import ParamsError, parse_params
from pipelines.sources import Table
from tests.conftest import make_params, run_pipeline

# ---------------------------------------------------------------- the function


@pytest.mark.parametrize(("raw", "category"), [
    (" Male", "Male"), ("Female ", "Female"), ("\tNo \n", "No"), ("Yes", "Yes"),
    ("", None), ("   ", None), (None, None), (float("nan"), None), (np.nan, None), ("NA", None), ("null", None),
    (" ? ", None), ("??", "??"), (2, "2"), (2.0, "2"), ("2", "2"), (" 2 ", "2"), ("02", "2"), ("2.0", "2"), (-3, "-3"), (np.int64(4), "4"),
    (np.float64(4.0), "4"), (0.5, "0.5"), ("0.50", "0.5"), (" 1e3", "1000"), (1.25, "1.25"),
    (True, "true"), (False, "false"), (np.bool_(True), "true"), ("TRUE", "true"), (" False ", "false"),
    ("2a", "2a"), ("1_000", "1_000"), ("Month-to-month", "Month-to-month"),
])
def test_normalize_categorical(raw: Any, category: str | None) -> None:
    assert normalize(raw, "categorical") == category


@pytest.mark.parametrize(("raw", "number"), [
    (42.5, 42.5), (42, 42.0), (" 42.5", 42.5), ("42.5 ", 42.5), ("-1e3", -1000.0), (".5", 0.5), ("7.", 7.0),
    (np.int64(3), 3.0), ("", None), ("  ", None), (None, None), (float("nan"), None), ("NA", None), ("?", None),
    # as exports format numbers: currency, comma thousands in groups of three, a trailing percent
    ("$1,234.50", 1234.5), (" -$1,234.50 ", -1234.5), ("$-12", -12.0), ("-€12", -12.0), ("£ 3", 3.0),
    ("¥100", 100.0), ("1,234", 1234.0), ("1,234,567.25", 1234567.25), ("45%", 45.0), ("12.5 %", 12.5),
])
def test_normalize_numeric(raw: Any, number: float | None) -> None:
    got = normalize(raw, "numeric")
    assert got == number and (got is None or type(got) is float)


@pytest.mark.parametrize("raw", ["abc", "1_000", "0x10", "4 2", True, np.bool_(False), [1], {"a": 1},
                                 # a decimal comma or odd grouping is never read as thousands
                                 "1,5", "12,34", "1,23,456", "$1,234,5", "€1.234,56", "$", "%", "+-$3", "(12)"])
def test_normalize_numeric_rejects(raw: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        normalize(raw, "numeric")


def test_normalize_is_idempotent_and_rejects_what_no_table_has() -> None:
    for raw in (" Male", 2, 2.0, " 2 ", 0.5, True, "1e-7", 1e20, "NA"):
        once = normalize(raw, "categorical")
        assert normalize(once, "categorical") == once
    assert math.isinf(normalize("1e999", "numeric"))  # callers reject it (collect: DataError, service: 400)
    for bad in (float("inf"), [1, 2]):
        with pytest.raises((TypeError, ValueError)):
            normalize(bad, "categorical")
    with pytest.raises(ValueError, match="column type"):
        normalize(1, "date")


COLUMNS = [{"name": "spend", "type": "numeric"}, {"name": "gender", "type": "categorical", "categories": ["F", "M"]},
           {"name": "cards", "type": "categorical", "categories": ["1", "2", "3"]}]


def test_request_validation_accepts_raw_values_and_normalises_them() -> None:
    from pydantic import TypeAdapter, ValidationError

    adapter = TypeAdapter(records_type(COLUMNS))
    sent = [{"spend": " 42.5", "gender": " M", "cards": 2}, {"spend": 3, "gender": "F ", "cards": "3"},
            {"spend": "", "gender": "  ", "cards": 2.0}, {"spend": None, "gender": True, "cards": " 7 "}]
    rows = to_rows(adapter.validate_python(sent), COLUMNS)
    assert rows == [[42.5, "M", "2"], [3.0, "F", "3"], [None, None, "2"], [None, "true", "7"]]
    assert tally(rows, COLUMNS) == ({"spend": 2, "gender": 1}, {"gender": 1, "cards": 1})
    assert check_records(sent, COLUMNS) == [dict(zip(("spend", "gender", "cards"), r)) for r in rows]
    # feeds normalises too: raw rows and validated rows give the same graph inputs
    raw_feeds = feeds([[r["spend"], r["gender"], r["cards"]] for r in sent], COLUMNS)
    for name, arr in feeds(rows, COLUMNS).items():
        np.testing.assert_array_equal(raw_feeds[name], arr)
    assert feeds(rows, COLUMNS)["cards"][:, 0].tolist() == ["2", "3", "2", "7"]
    for record, words in [({"spend": True, "gender": "F", "cards": 1}, "records[0].spend: expected a number"),
                          ({"spend": "4 2", "gender": "F", "cards": 1}, "records[0].spend: expected a number"),
                          ({"spend": "1e999", "gender": "F", "cards": 1}, "records[0].spend: expected a finite"),
                          ({"spend": 1, "gender": [1], "cards": 1}, "records[0].gender: expected a string"),
                          ({"spend": 1, "gender": "F", "cards": float("inf")}, "records[0].cards: expected a finite"),
                          ({"spend": 1, "gender": "F"}, "records[0].cards: field required"),
                          ({"spend": 1, "gender": "F", "cards": 1, "x": 1}, "records[0].x: unknown field")]:
        with pytest.raises(ValidationError, match=re.escape(words)):
            adapter.validate_python([record])


# ---------------------------------------------------------------- collect uses it


@pytest.fixture()
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _profile(out: Path) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in json.loads((out / "profile.json").read_text())["columns"]}


def test_collect_categories_are_the_normalised_raw_values(in_tmp: Path) -> None:
    n = 120
    gender = [(" Male", "Female ", "Male", "Female")[i % 4] for i in range(n)]
    with open("raw.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["gender", "num_cards", "paperless", "spend", "y"])
        for i in range(n):
            w.writerow([gender[i], 1 + i % 4, ("TRUE", "False", "true")[i % 3], (f" {i}.5", f"{i}.25 ", "")[i % 3],
                        "ab"[i % 2]])
    collect.run(make_params(data={"source": "csv:raw.csv", "target": "y"}), in_tmp / "c")
    cols = _profile(in_tmp / "c")
    assert cols["gender"]["categories"] == ["Female", "Male"]
    assert cols["num_cards"]["type"] == "categorical" and cols["num_cards"]["categories"] == ["1", "2", "3", "4"]
    assert cols["paperless"]["categories"] == ["false", "true"] and cols["spend"]["type"] == "numeric"
    assert not any(c["forced"] for c in cols.values())
    frame = pd.read_parquet(in_tmp / "c" / "data.parquet")
    assert frame["gender"].tolist() == [normalize(g, "categorical") for g in gender]
    # JSON Lines: one column holding 2, "2", 2.0 and " 2 " is one category "2"
    with open("raw.jsonl", "w") as fh:
        for i in range(n):
            code = (i % 3 + 1, str(i % 3 + 1), float(i % 3 + 1), f" {i % 3 + 1} ")[i % 4]
            fh.write(json.dumps({"gender": gender[i], "code": code, "y": "ab"[i % 2]}) + "\n")
    collect.run(make_params(data={"source": "jsonl:raw.jsonl", "target": "y"}), in_tmp / "j")
    cols = _profile(in_tmp / "j")
    assert cols["code"]["categories"] == ["1", "2", "3"] and cols["gender"]["categories"] == ["Female", "Male"]


def _prepare(frame: pd.DataFrame, **data: Any):
    params = make_params(data={"source": "test:table", "target": "y", **data}).data
    return prepare_table(Table(frame=frame, target="y", origin="t.csv"), params)


def _frame(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame({
        "num_cards": rng.integers(1, 5, n),                         # inferred: a code (categorical)
        "store_id": rng.integers(100, 160, n),                      # inferred: numeric (too many values)
        "row": np.arange(n),                                        # inferred: a row number (dropped)
        "ratio": rng.choice([0.5, 1.5, 2.0], n),                    # fractional: numeric
        "amount": pd.Series([f" {v} " for v in rng.integers(0, 9, n)], dtype="str"),
        "y": np.where(np.arange(n) % 2, "yes", "no"),
    })


def test_data_columns_force_numeric_and_categorical() -> None:
    frame = _frame()
    prep = _prepare(frame)
    assert prep.kinds == {"num_cards": "categorical", "store_id": "numeric", "ratio": "numeric",
                          "amount": "categorical"}
    assert [d["name"] for d in prep.dropped] == ["row"]
    forced = {"num_cards": "numeric", "store_id": "categorical", "row": "categorical", "ratio": "categorical",
              "amount": "numeric"}
    prep = _prepare(frame, columns=forced)
    assert prep.kinds == forced and prep.dropped == [] and prep.forced == forced
    out = prep.frame
    assert str(out["num_cards"].dtype) == "float64" and out["num_cards"].tolist() == frame["num_cards"].tolist()
    assert out["store_id"].tolist() == [str(v) for v in frame["store_id"]]
    assert out["row"].tolist() == [str(v) for v in range(len(frame))]  # kept: a forced column is never an ID
    assert set(out["ratio"]) == {"0.5", "1.5", "2"}
    assert out["amount"].tolist() == [float(v) for v in frame["amount"]]
    # a forced constant column is kept too
    const = _prepare(frame.assign(k=7), columns={"k": "categorical"})
    assert const.kinds["k"] == "categorical" and set(const.frame["k"]) == {"7"}


def test_forced_columns_in_the_profile(in_tmp: Path) -> None:
    _frame().to_csv("t.csv", index=False)
    collect.run(make_params(data={"source": "csv:t.csv", "target": "y", "columns": {"store_id": "categorical"}}),
                in_tmp / "c")
    cols = _profile(in_tmp / "c")
    assert cols["store_id"]["forced"] is True and cols["store_id"]["type"] == "categorical"
    assert cols["store_id"]["categories"] == sorted({str(v) for v in _frame()["store_id"]})
    assert cols["num_cards"]["forced"] is False


def test_data_columns_errors_name_file_row_and_column() -> None:
    frame = _frame()
    with pytest.raises(DataError, match=r"^t\.csv: column 'nope' \(data\.columns\.nope\) not found; "
                                        r"available columns: 'num_cards', 'store_id'"):
        _prepare(frame, columns={"nope": "numeric"})
    junk = frame.assign(spend=pd.Series(["1.5"] * 20 + ["abc"] + ["2"] * 39, dtype="str"))
    with pytest.raises(DataError, match=r"^t\.csv: row 20, column 'spend': non-numeric value 'abc' in a numeric "
                                        r"column \(data\.columns\.spend: numeric"):
        _prepare(junk, columns={"spend": "numeric"})
    # unforced, a mostly-numeric column with junk stops collect; forcing it categorical keeps the values
    with pytest.raises(DataError, match=r"row 20, column 'spend': non-numeric value 'abc'.*data\.columns"):
        _prepare(junk)
    assert set(_prepare(junk, columns={"spend": "categorical"}).frame["spend"]) == {"1.5", "abc", "2"}
    with pytest.raises(DataError, match=r"column 'flag': boolean values cannot be numeric"):
        _prepare(frame.assign(flag=np.arange(60) % 2 == 0), columns={"flag": "numeric"})
    with pytest.raises(DataError, match=r"row 3, column 'bad': non-finite number inf"):
        _prepare(frame.assign(bad=[1.0, 2.0, 3.0, np.inf] + [1.0] * 56), columns={"bad": "categorical"})
    with pytest.raises(DataError, match=r"column 'empty': every value is missing"):
        _prepare(frame.assign(empty=np.nan), columns={"empty": "categorical"})


@pytest.mark.parametrize(("data", "message"), [
    ({"columns": {"a": "number"}}, r"data\.columns\.a: expected 'numeric' or 'categorical', got 'number'"),
    ({"columns": {"a": 1}}, r"data\.columns\.a: expected 'numeric' or 'categorical', got 1"),
    ({"columns": ["a"]}, r"data\.columns: expected a mapping"),
    ({"target": "y", "columns": {"y": "numeric"}}, r"data\.columns\.y: 'y' is the target column"),
    ({"target": "y", "drop": ["a"], "columns": {"a": "numeric"}}, r"data\.columns\.a: 'a' is also listed in data\.drop"),
    ({"target": "y", "text": "t", "columns": {"a": "numeric"}}, r"data\.columns: not used with data\.text"),
])
def test_bad_data_columns_name_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ParamsError, match=f"^{message}"):
        parse_params({"data": data})


def test_params_files_list_data_columns() -> None:
    import yaml

    from pipelines.params import load_params
    from tests.conftest import ROOT

    for path in [ROOT / "params.yaml", *sorted((ROOT / "presets").glob("*.yaml"))]:
        assert "columns" in yaml.safe_load(path.read_text())["data"], path
        assert load_params(path).data.columns == {}


# ---------------------------------------------------------------- end to end

N_RAW = 400
GENDERS = (" Male", "Male", "Female ", "Female", " Female")
PLANS = ("basic", " basic", "premium ", "premium", "family")


def write_messy_csv(path: Path, n: int = N_RAW, seed: int = 0) -> list[int]:
    """A churn-like CSV written cell by cell, as exported data often is: stray whitespace in
    categories, an integer-coded category (num_cards 1..4), a store id forced categorical, a numeric
    column with " 42.5"-style cells and gaps, money formatted as "$1,234.50", missing targets. Returns the rows that have a target."""
    rng = np.random.default_rng(seed)
    kept = []
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["customer_id", "gender", "plan", "num_cards", "store_id", "monthly_charges", "tenure",
                    "total_charges", "churn"])
        for i in range(n):
            cards = int(rng.integers(1, 5))
            store = int(rng.integers(101, 131))
            charges = round(float(rng.uniform(20, 120)), 2)
            tenure = int(rng.integers(0, 72))
            plan = PLANS[int(rng.integers(0, len(PLANS)))]
            logit = -1.0 + 0.8 * (cards >= 3) + 0.02 * (charges - 60) - 0.03 * (tenure - 36) + 0.7 * ("premium" in plan)
            churn = "Yes" if rng.random() < 1 / (1 + math.exp(-logit)) else "No"
            charges_cell = (f" {charges}", f"{charges} ", str(charges), "")[i % 7 if i % 7 < 4 else 2]
            if i % 53 == 5:
                churn = ""  # no target: collect drops the row
            else:
                kept.append(i)
            total = charges * max(tenure, 1)  # as a spreadsheet exports money: "$1,234.50", some plain
            total_cell = (f"${total:,.2f}", f" ${total:,.2f}", f"{total:.2f}", f"{total:,.2f}", "")[i % 5]
            w.writerow([f"C{10000 + i}", GENDERS[i % len(GENDERS)] if i % 31 else "", plan, cards, store,
                        charges_cell, tenure if i % 29 else "", total_cell, churn])
    return kept


def client_value(cell: str) -> Any:
    """A raw CSV cell as a JSON client sends it: an integer text as an int, a plain decimal as a
    number, anything else (whitespace, empty) as the text itself."""
    if re.fullmatch(r"-?\d+", cell):
        return int(cell)
    if re.fullmatch(r"-?\d+\.\d+", cell):
        return float(cell)
    return cell


@pytest.mark.slow
def test_raw_test_rows_through_the_service_path_equal_the_pipeline_predictions(tmp_path: Path, mlflow_uri: str,
                                                                                 monkeypatch: pytest.MonkeyPatch):
    from pydantic import TypeAdapter

    from pipelines.data import load_split
    from pipelines.plugins import predict_outputs
    from pipelines.evaluate import load_network
    from pipelines.modalities.tabular.prep import onnx_feeds
    from serving.runtime import make_session, softmax

    monkeypatch.chdir(tmp_path)
    kept = write_messy_csv(tmp_path / "raw.csv")
    params = make_params(
        data={"source": "csv:raw.csv", "target": "churn", "task": "auto",
              "columns": {"store_id": "categorical", "tenure": "numeric"}},
        model={"name": "tab_mlp", "kwargs": {"hidden": [16]}},
        optim={"label_smoothing": 0.0},
        train={"epochs": 3, "batch_size": 64, "patience": 3},
        evaluate={"min_score": 0.0, "baselines": ["logreg"]},
        deploy={"model_name": "raw-test", "build_bento": False},
    )
    run_pipeline(params, tmp_path)

    prof = json.loads((tmp_path / "collect" / "profile.json").read_text())
    types = {c["name"]: (c["type"], c["forced"]) for c in prof["columns"]}
    assert types == {"gender": ("categorical", False), "plan": ("categorical", False),
                     "num_cards": ("categorical", False), "store_id": ("categorical", True),
                     "monthly_charges": ("numeric", False), "tenure": ("numeric", True),
                     "total_charges": ("numeric", False)}
    cats = {c["name"]: c.get("categories") for c in prof["columns"]}
    assert cats["gender"] == ["Female", "Male"] and cats["plan"] == ["basic", "family", "premium"]
    assert cats["num_cards"] == ["1", "2", "3", "4"]
    assert prof["rows"] == len(kept) and prof["dropped_rows_missing_target"] == N_RAW - len(kept)

    manifest = json.loads((tmp_path / "deploy" / "manifest.json").read_text())
    columns = manifest["input"]["columns"]
    names = [c["name"] for c in columns]
    with open(tmp_path / "raw.csv", newline="") as fh:
        raw_rows = list(csv.DictReader(fh))
    test_index = np.load(tmp_path / "split" / "test.npz")["index"]  # collected rows
    records = [{k: client_value(raw_rows[kept[i]][k]) for k in names} for i in test_index]
    assert any(isinstance(r["num_cards"], int) for r in records) and any(isinstance(r["store_id"], int) for r in records)
    assert any(isinstance(r["monthly_charges"], str) and r["monthly_charges"].strip() for r in records)
    assert any(str(r["total_charges"]).strip().startswith("$") for r in records)
    assert any(r["gender"] != r["gender"].strip() for r in records if isinstance(r["gender"], str))

    validated = TypeAdapter(records_type(columns)).validate_python(records)
    rows = to_rows(validated, columns)
    missing, unknown = tally(rows, columns)
    train_cats = {c["name"]: set(c["categories"]) for c in columns if c["type"] == "categorical"}
    seen = [all(r[j] is None or r[j] in train_cats[c["name"]] for j, c in enumerate(columns)
                if c["type"] == "categorical") for r in rows]
    assert sum(seen) >= 0.9 * len(rows)
    assert tally([r for r, ok in zip(rows, seen) if ok], columns)[1] == {}  # no unknowns where training saw them
    blank = {name: n for name in names if (n := sum(isinstance(r[name], str) and not r[name].strip() for r in records))}
    assert missing == blank and {"monthly_charges", "gender", "tenure", "total_charges"} <= set(missing)

    session = make_session(tmp_path / "deploy" / "model.onnx")
    output = manifest["output"]["name"]
    served = softmax(session.run([output], feeds(rows, columns))[0].astype(np.float64))
    X_test, _ = load_split(tmp_path / "split", "test")
    pipeline = softmax(predict_outputs(load_network(tmp_path / "train" / "model.pt"), X_test).astype(np.float64))
    np.testing.assert_allclose(served, pipeline, atol=1e-5)
    # and the same as the deployed graph on split's own raw test rows (the collected values)
    state = json.loads((tmp_path / "split" / "preprocess.json").read_text())
    test_frame = pd.read_parquet(tmp_path / "split" / "test.parquet")
    direct = softmax(session.run([output], onnx_feeds(test_frame, state))[0].astype(np.float64))
    np.testing.assert_allclose(served, direct, atol=1e-6)
