"""collect on tables: CSV/Parquet files and bundled sklearn tables, type and task inference, errors."""

import json

import numpy as np
import pandas as pd
import pytest

from pipelines import collect
from pipelines.files import DataError, load_arrays
from pipelines.params import ParamsError, parse_params
from pipelines.sources import Table
from pipelines.modalities.tabular.infer import frame_hash, prepare_table
from tests.conftest import make_params

N = 200


def churn_frame(n: int = N) -> pd.DataFrame:
    """A churn-like table: mixed types, missing values, ~5 % "Yes" target, ID columns."""
    rng = np.random.default_rng(0)
    charges = rng.uniform(20, 120, n).round(2)
    charges[[3, 25]] = np.nan
    contract = rng.choice(["Month-to-month", "One year", "Two year"], n).astype(object)
    contract[[5, 9]] = None
    lines = rng.integers(1, 5, n).astype(float)
    lines[7] = np.nan
    churn = np.where(np.arange(n) % 20 == 0, "Yes", "No").astype(object)
    churn[11] = None  # one row without a target: dropped, counted
    return pd.DataFrame({
        "customer_id": [f"{7000 + i}-C{i * 37 % 1000:03d}" for i in range(n)],
        "seq": np.arange(n),
        "tenure": rng.integers(0, 73, n),
        "monthly_charges": charges,
        "contract": pd.Series(contract, dtype="str"),
        "paperless": rng.random(n) < 0.5,
        "num_lines": lines,
        "partner": pd.Series(rng.choice(["Yes", "No"], n), dtype="str"),
        "churn": pd.Series(churn, dtype="str"),
    })


def _collect(tmp_path, source, **data):
    out = tmp_path / "collect"
    summary = collect.run(make_params(data={"source": source, **data}), out)
    prof = json.loads((out / "profile.json").read_text())
    return summary, prof, out


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
    """Run in ``tmp_path`` so ``csv:<relative path>`` resolves like from the project root."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _check_churn(prof, out):
    frame = pd.read_parquet(out / "data.parquet")
    kept = ["tenure", "monthly_charges", "contract", "paperless", "num_lines", "partner"]
    assert list(frame.columns) == kept + ["churn"]
    assert sorted(p.name for p in out.iterdir()) == ["data.parquet", "profile.json"]
    assert {c: str(t) for c, t in frame.dtypes.items()} == {
        "tenure": "float64", "monthly_charges": "float64", "contract": "string", "paperless": "string",
        "num_lines": "string", "partner": "string", "churn": "string"}
    cols = {c["name"]: c for c in prof["columns"]}
    assert [c["name"] for c in prof["columns"]] == kept
    assert {n: c["type"] for n, c in cols.items()} == {
        "tenure": "numeric", "monthly_charges": "numeric", "contract": "categorical",
        "paperless": "categorical", "num_lines": "categorical", "partner": "categorical"}
    assert cols["num_lines"]["categories"] == ["1", "2", "3", "4"]
    assert cols["paperless"]["categories"] == ["false", "true"]
    assert cols["partner"]["categories"] == ["No", "Yes"]
    assert cols["contract"]["categories"] == ["Month-to-month", "One year", "Two year"]
    assert cols["contract"]["missing_rate"] == round(2 / (N - 1), 6) and frame["contract"].isna().sum() == 2
    assert frame["num_lines"].isna().sum() == 1 and frame["monthly_charges"].isna().sum() == 2
    assert {"min", "max", "mean"} <= set(cols["tenure"]) and "categories" not in cols["tenure"]
    assert {d["name"] for d in prof["dropped"]} == {"customer_id", "seq"}
    assert all("identifier-like" in d["reason"] for d in prof["dropped"])
    assert prof["dropped_rows_missing_target"] == 1 and prof["rows"] == N - 1
    assert prof["task"] == "classification" and prof["kind"] == "tabular" and prof["target"] == "churn"
    assert prof["classes"] == ["No", "Yes"] and prof["num_classes"] == 2
    assert prof["class_balance"] == {"No": 189, "Yes": 10} and prof["imbalance_ratio"] == 18.9
    assert prof["schema"]["features"] == {"columns": 6} and prof["value_range"] is None
    assert prof["data_hash"] == frame_hash(frame)  # the hash is of the table as written
    assert {"target_present", "no_empty_columns", "at_least_two_classes"} <= set(prof["checks_passed"])
    return prof


def test_csv_churn_table(in_tmp):
    churn_frame().to_csv("churn.csv", index=False)
    summary, prof, out = _collect(in_tmp, "csv:churn.csv", target="churn")
    _check_churn(prof, out)
    assert summary == {"rows": N - 1, "data_hash": prof["data_hash"]}
    assert prof["source"] == "churn.csv" and prof["params"]["target"] == "churn"


def test_parquet_matches_csv_and_str_dtype_is_categorical(in_tmp):
    frame = churn_frame()
    # pandas 3: text is the `str` dtype (a StringDtype), not object - inference must still see it
    assert isinstance(frame["contract"].dtype, pd.StringDtype) and frame["contract"].dtype != object
    frame.to_parquet("churn.parquet", index=False)
    frame.to_csv("churn.csv", index=False)
    _, from_parquet, out = _collect(in_tmp, "parquet:churn.parquet", target="churn")
    _check_churn(from_parquet, out)
    _, from_csv, _ = _collect(in_tmp, "csv:churn.csv", target="churn")
    assert from_parquet["data_hash"] == from_csv["data_hash"]
    assert _collect(in_tmp, "csv:churn.csv", target="churn")[1]["data_hash"] == from_csv["data_hash"]  # stable


def test_drop_param_and_explicit_task(in_tmp):
    churn_frame().to_csv("churn.csv", index=False)
    _, prof, out = _collect(in_tmp, "csv:churn.csv", target="num_lines", drop=["churn", "partner"],
                            task="regression")
    assert {"name": "churn", "reason": "listed in data.drop"} in prof["dropped"]
    assert prof["task"] == "regression" and prof["dropped_rows_missing_target"] == 1
    assert str(pd.read_parquet(out / "data.parquet")["num_lines"].dtype) == "float64"
    _, prof, _ = _collect(in_tmp, "csv:churn.csv", target="num_lines", drop=["churn"])
    assert prof["task"] == "classification" and prof["classes"] == ["1", "2", "3", "4"]


def test_bundled_breast_cancer(tmp_path):
    _, prof, out = _collect(tmp_path, "sklearn:breast_cancer")
    frame = pd.read_parquet(out / "data.parquet")
    assert frame.shape == (569, 31) and frame.columns[-1] == "target"
    assert prof["task"] == "classification" and prof["classes"] == ["benign", "malignant"]
    assert prof["class_balance"] == {"benign": 357, "malignant": 212}
    assert all(c["type"] == "numeric" for c in prof["columns"]) and prof["dropped"] == []


def test_bundled_diabetes(tmp_path):
    _, prof, out = _collect(tmp_path, "sklearn:diabetes")
    frame = pd.read_parquet(out / "data.parquet")
    assert frame.shape == (442, 11) and str(frame["target"].dtype) == "float64"
    assert prof["task"] == "regression" and set(prof["target_stats"]) == {"mean", "std", "min", "max"}
    assert "classes" not in prof
    # "sex" has two (scaled, fractional) values: a measurement, not a code
    assert {c["name"]: c["type"] for c in prof["columns"]}["sex"] == "numeric"
    with pytest.raises(ParamsError, match="data.task: sklearn:diabetes .* regression dataset"):
        collect.run(make_params(data={"source": "sklearn:diabetes", "task": "classification"}), tmp_path / "c")


def _prepare(frame, target="y", **data):
    params = make_params(data={"source": "test:table", "target": target, **data}).data
    return prepare_table(Table(frame=frame, target=target, origin="t.csv"), params)


def test_task_inference_both_ways():
    rng = np.random.default_rng(1)
    x = rng.normal(size=N)
    price = pd.DataFrame({"x": x, "y": 200_000 + 50_000 * x})
    assert _prepare(price).task == "regression"
    many_ints = pd.DataFrame({"x": x, "y": rng.integers(0, 500, N)})
    assert _prepare(many_ints).task == "regression"
    three = pd.DataFrame({"x": x, "y": np.arange(N) % 3})
    prep = _prepare(three)
    assert prep.task == "classification" and sorted(prep.frame["y"].unique()) == ["0", "1", "2"]
    flags = pd.DataFrame({"x": x, "y": rng.random(N) < 0.3})
    assert _prepare(flags).task == "classification"
    assert sorted(_prepare(flags).frame["y"].unique()) == ["false", "true"]
    assert _prepare(three, task="regression").task == "regression"
    # a price as an export writes it is a number, not one class per price
    money = pd.DataFrame({"x": x, "y": [f"${v:,.0f}" for v in 200_000 + 50_000 * x]})
    prep = _prepare(money)
    assert prep.task == "regression" and prep.frame["y"].iloc[0] == round(200_000 + 50_000 * x[0])


def test_column_rules():
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({
        "amount": rng.choice([0, 1000, 5000], N),          # few whole values, spaced like amounts
        "rating": rng.integers(1, 6, N),                   # codes 1..5
        "score": rng.normal(size=N).round(1),              # continuous
        "unique_float": rng.normal(size=N),                # distinct per row but not an ID
        "account_id": rng.permutation(N) + 10_000,         # ID-named, distinct
        "const": 7,
        "numeric_text": pd.Series([str(i % 50) for i in range(N)], dtype="str"),
        "y": np.arange(N) % 2,
    })
    prep = _prepare(frame)
    assert prep.kinds == {"amount": "numeric", "rating": "categorical", "score": "numeric",
                          "unique_float": "numeric", "numeric_text": "numeric"}
    reasons = {d["name"]: d["reason"] for d in prep.dropped}
    assert set(reasons) == {"account_id", "const"} and "ID-named" in reasons["account_id"]
    assert "constant" in reasons["const"]


def test_small_table_ids_need_an_id_name_and_booleans_with_gaps():
    frame = pd.DataFrame({
        "customerID": [f"C{i}" for i in range(10)],          # ID-named: dropped even in 10 rows
        "city": [f"town {i}" for i in range(10)],             # distinct, but 10 rows prove nothing
        "flag": pd.Series([True, False, None] * 3 + [True], dtype=object),  # bools with a gap
        "y": ["a", "b"] * 5,
    })
    prep = _prepare(frame)
    assert [d["name"] for d in prep.dropped] == ["customerID"]
    assert prep.kinds == {"city": "categorical", "flag": "categorical"}
    assert prep.frame["flag"].tolist()[:3] == ["true", "false", pd.NA]


def test_dates_written_as_text_are_left_out_like_date_dtypes():
    rng = np.random.default_rng(4)
    days = pd.date_range("2024-01-01", periods=40, freq="D")
    frame = pd.DataFrame({
        "signup": rng.choice(days.strftime("%Y-%m-%d"), N),                       # repeats: not an ID either
        "last_seen": rng.choice(days.strftime("%d/%m/%Y %H:%M"), N),
        "eu_date": np.where(rng.random(N) < 0.1, "", rng.choice(days.strftime("%d.%m.%Y"), N)),
        "version": rng.choice(["1.2.10", "1.3.2", "2.0.11"], N),                 # not a date
        "kept": rng.choice(days.strftime("%Y-%m-%d"), N),
        "x": rng.normal(size=N), "y": np.arange(N) % 2})
    prep = _prepare(frame, columns={"kept": "categorical"})
    reasons = {d["name"]: d["reason"] for d in prep.dropped}
    assert set(reasons) == {"signup", "last_seen", "eu_date"}
    assert reasons["signup"].startswith("dates/times written as text (e.g. '20") and "data.columns.signup" in reasons["signup"]
    assert prep.kinds == {"version": "categorical", "kept": "categorical", "x": "numeric"}


def test_an_id_repeated_only_by_exact_duplicate_rows_is_still_an_id():
    """A real export with duplicated records: the duplicates repeat their record's ID, so the ID is not
    unique per row, but it is per distinct row. Repeats with different data are real reuse: kept."""
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"customer_id": [f"C{i:04d}" for i in range(N)], "ref": np.arange(N) + 1,
                          "x": rng.normal(size=N), "plan": rng.choice(["a", "b"], N), "y": np.arange(N) % 2})
    frame = pd.concat([frame, frame.iloc[:15]], ignore_index=True)  # 15 exact duplicate rows
    prep = _prepare(frame)
    reasons = {d["name"]: d["reason"] for d in prep.dropped}
    assert set(reasons) == {"customer_id", "ref"}
    assert reasons["customer_id"] == (f"identifier-like: a distinct text value in each of the {N} distinct rows "
                                      "(15 exact duplicate rows repeat theirs)")
    assert prep.kinds == {"x": "numeric", "plan": "categorical"} and len(prep.frame) == N + 15
    reused = frame.copy()
    reused.loc[N:, "x"] += 1.0  # the same IDs with other data: not duplicates, so not provably IDs
    assert {d["name"] for d in _prepare(reused).dropped} == set()


def test_digits_profile_unchanged(tmp_path):
    out = tmp_path / "collect"
    collect.run(make_params(), out)  # data.task defaults to auto
    prof = json.loads((out / "profile.json").read_text())
    assert prof["task"] == "classification" and prof["kind"] == "image" and prof["num_classes"] == 10
    assert set(prof) == {"source", "task", "kind", "rows", "schema", "value_range", "observed_range",
                         "data_hash", "checks_passed", "classes", "num_classes", "class_balance",
                         "imbalance_ratio", "params"}
    assert prof["value_range"] == [0.0, 16.0] and prof["schema"]["features"]["shape"] == [1, 8, 8]
    assert load_arrays(out / "data.npz", "X", "y")["y"].dtype == np.int64
    with pytest.raises(ParamsError, match="data.target: sklearn:digits"):
        collect.run(make_params(data={"target": "label"}), tmp_path / "c")


def _write_bad(kind):
    """Write a broken table to the current dir; return (source, data overrides)."""
    frame = churn_frame(40)
    if kind == "missing_target_column":
        frame.to_csv("t.csv", index=False)
        return "csv:t.csv", {"target": "Churn"}
    if kind == "target_all_missing":
        frame["churn"] = pd.Series([None] * 40, dtype="str")
    elif kind == "single_class":
        frame["churn"] = "No"
    elif kind == "empty_column":
        frame["notes"] = np.nan
    elif kind == "junk_numeric":
        frame["income"] = [str(1000 + i) for i in range(40)]
        frame.loc[17, "income"] = "abc"
    elif kind == "inf":
        frame.loc[21, "monthly_charges"] = np.inf
    elif kind == "no_features":
        frame = frame[["customer_id", "churn"]]
    elif kind == "regression_text_target":
        frame.to_csv("t.csv", index=False)
        return "csv:t.csv", {"target": "churn", "task": "regression"}
    elif kind == "unknown_drop":
        frame.to_csv("t.csv", index=False)
        return "csv:t.csv", {"target": "churn", "drop": ["tenure", "nope"]}
    elif kind == "missing_file":
        return "csv:data/nope.csv", {"target": "churn"}
    elif kind == "empty_file":
        open("t.csv", "w").close()
        return "csv:t.csv", {"target": "churn"}
    elif kind == "header_only":
        frame.iloc[:0].to_csv("t.csv", index=False)
        return "csv:t.csv", {"target": "churn"}
    elif kind == "unreadable_csv":
        with open("t.csv", "wb") as fh:
            fh.write(b"a,b\n\xff\xfe\x00\x81,\x9c\n")
        return "csv:t.csv", {"target": "b"}
    elif kind == "utf16_csv":  # Excel's "Unicode Text" export
        with open("t.csv", "wb") as fh:
            fh.write("a\tb\n1\tYes\n".encode("utf-16"))
        return "csv:t.csv", {"target": "b"}
    elif kind == "unreadable_parquet":
        with open("t.parquet", "w") as fh:
            fh.write("a,b\n1,2\n")
        return "parquet:t.parquet", {"target": "b"}
    frame.to_csv("t.csv", index=False)
    return "csv:t.csv", {"target": "churn"}


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing_target_column", r"t\.csv: column 'Churn' \(data\.target\) not found; available columns: "
                                  r"'customer_id', 'seq', .*'churn'"),
        ("target_all_missing", r"t\.csv: column 'churn': target is missing in every row"),
        ("single_class", r"t\.csv: column 'churn': a single class \('No'\)"),
        ("empty_column", r"t\.csv: column 'notes': every value is missing"),
        ("junk_numeric", r"t\.csv: row 17, column 'income': non-numeric value 'abc' in a numeric column"),
        ("inf", r"t\.csv: row 21, column 'monthly_charges': non-finite value inf"),
        ("no_features", r"t\.csv: no feature columns left \(dropped: customer_id \(identifier-like"),
        ("regression_text_target", r"t\.csv: row 0, column 'churn': regression needs a numeric target, got 'Yes'"),
        ("unknown_drop", r"t\.csv: column 'nope' \(data\.drop\[1\]\) not found"),
        ("missing_file", r"data/nope\.csv: file not found"),
        ("empty_file", r"t\.csv: file is empty"),
        ("header_only", r"t\.csv: table is empty \(0 rows\)"),
        ("unreadable_csv", r"t\.csv: not UTF-8 text \(byte 0xff at byte 4; a GBK"),
        ("utf16_csv", r"t\.csv: UTF-16 text \(it starts with a UTF-16 byte-order mark\), not UTF-8: save it as "
                      r"UTF-8, e\.g\. `iconv -f UTF-16"),
        ("unreadable_parquet", r"t\.parquet: not a readable Parquet file"),
    ],
)
def test_bad_tables_are_named_and_write_nothing(in_tmp, kind, message):
    source, data = _write_bad(kind)
    before = sorted(p.name for p in in_tmp.iterdir())
    with pytest.raises(DataError, match=f"^{message}"):
        collect.run(make_params(data={"source": source, **data}), in_tmp / "collect")
    assert sorted(p.name for p in in_tmp.iterdir()) == before  # no output, no temp dir


def test_missing_target_rows_are_dropped_not_fatal(in_tmp):
    frame = churn_frame(40)
    frame.loc[[2, 30], "churn"] = None
    frame.to_csv("t.csv", index=False)
    _, prof, out = _collect(in_tmp, "csv:t.csv", target="churn")
    assert prof["dropped_rows_missing_target"] == 3 and prof["rows"] == 37  # rows 2, 11, 30
    assert len(pd.read_parquet(out / "data.parquet")) == 37


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"task": "guess"}, "data.task"),
        ({"target": 3}, "data.target"),
        ({"drop": "id"}, "data.drop"),
        ({"drop": ["id", "id"]}, r"data.drop\[1\]: column 'id' listed twice"),
        ({"target": "y", "drop": ["y"]}, r"data.drop\[0\]: 'y' is the target column"),
    ],
)
def test_bad_data_params_name_the_key(data, named):
    with pytest.raises(ParamsError, match=f"^{named}"):
        parse_params({"data": data})


def test_file_sources_need_target_and_extension(in_tmp):
    churn_frame(40).to_csv("t.csv", index=False)
    with pytest.raises(ParamsError, match="data.target: required for 'csv:t.csv'"):
        collect.run(make_params(data={"source": "csv:t.csv"}), in_tmp / "collect")
    with pytest.raises(ParamsError, match=r"unknown source 'csv:t\.txt' .*csv:<path> needs a path ending in \.csv"):
        collect.run(make_params(data={"source": "csv:t.txt", "target": "churn"}), in_tmp / "collect")


def test_a_trailing_delimiter_column_is_left_out_and_a_named_empty_one_is_not(in_tmp, caplog):
    """Every line ending in a comma (an Excel habit) reads as a column without name or values: left
    out with a warning; a named empty column stays an error (the user names it in data.drop)."""
    frame = churn_frame(60)[["tenure", "contract", "churn"]]
    lines = frame.to_csv(index=False).splitlines()
    with open("t.csv", "w") as fh:
        fh.write("\n".join(line + "," for line in lines) + "\n")
    with caplog.at_level("WARNING"):
        _, prof, _ = _collect(in_tmp, "csv:t.csv", target="churn")
    assert [c["name"] for c in prof["columns"]] == ["tenure", "contract"]
    assert "leaving out 1 column(s) without a header name and without values (header position(s) 4" in caplog.text
    with open("t.csv", "w") as fh:
        fh.write("\n".join(line + (",note" if i == 0 else ",") for i, line in enumerate(lines)) + "\n")
    with pytest.raises(DataError, match="column 'note': every value is missing"):
        _collect(in_tmp, "csv:t.csv", target="churn")
