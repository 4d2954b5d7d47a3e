"""One class, several letter cases: ``pipelines.labels`` and where collect and batch prediction use it."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import numpy as np
import pandas as pd

from pipelines import collect
from pipelines.labels import canonical_spellings, case_groups, describe_groups
from pipelines.predict import Tally, _agreement
from tests.conftest import make_params


def test_case_groups_pick_the_most_frequent_spelling() -> None:
    counts = {"Yes": 61, "YES": 39, "yes": 39, "No": 333, "NO": 187, "maybe": 4}
    groups = case_groups(counts)
    assert groups == [["No", "NO"], ["Yes", "YES", "yes"]]  # ties in sorted order
    assert canonical_spellings(groups) == {"NO": "No", "YES": "Yes", "yes": "Yes"}
    assert describe_groups(groups, counts) == "'No' (333 rows) / 'NO' (187); 'Yes' (61 rows) / 'YES' (39) / 'yes' (39)"
    assert case_groups({"a": 1, "b": 2}) == [] and case_groups({}) == []
    many = {f"c{i}": 2 for i in range(7)} | {f"C{i}": 1 for i in range(7)}
    assert describe_groups(case_groups(many), many, limit=2).endswith("; and 5 more")


def _churn_csv(path, n: int = 120) -> None:
    """Stray spaces around header names, a Yes/No target in three cases, a feature in two."""
    rng = np.random.default_rng(0)
    spend = rng.uniform(10, 100, n).round(2)
    churn = np.where(spend > 70, "Yes", "No").astype(object)
    churn[::5] = [c.upper() for c in churn[::5]]
    churn[1::7] = [c.lower() for c in churn[1::7]]
    gender = rng.choice(["Male", "male", "Female"], n)
    frame = pd.DataFrame({" spend ": spend, "gender ": gender, " churn": churn})
    path.write_text(frame.to_csv(index=False), encoding="utf-8")


def test_collect_merges_label_cases_strips_header_names_and_warns_on_feature_cases(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    _churn_csv(tmp_path / "t.csv")
    with caplog.at_level(logging.WARNING):
        collect.run(make_params(data={"source": "csv:t.csv", "target": "churn"}), tmp_path / "collect")
    prof = json.loads((tmp_path / "collect" / "profile.json").read_text())
    assert [c["name"] for c in prof["columns"]] == ["spend", "gender"]  # "Age " is "Age", as predict reads it
    assert prof["classes"] == ["No", "Yes"] and prof["num_classes"] == 2 and prof["task"] == "classification"
    assert sum(prof["class_balance"].values()) == 120
    cats = {c["name"]: c.get("categories") for c in prof["columns"]}
    assert cats["gender"] == ["Female", "Male", "male"]  # features stay as written: the service takes them so
    text = caplog.text
    assert "column 'churn': labels that differ only in letter case are one class" in text and "'NO'" in text
    assert "column 'gender': categories that differ only in letter case stay separate" in text


def test_text_labels_in_several_cases_are_one_class(tmp_path):
    from pipelines.modalities.text.corpus import prepare_texts
    from pipelines.sources import TextTable

    frame = pd.DataFrame({"t": [f"text {i}" for i in range(9)],
                          "y": ["Positive", "positive", "Positive", "NEGATIVE", "negative", "negative",
                                "Positive", "negative", " POSITIVE "]})
    prep = prepare_texts(TextTable(frame=frame, text="t", target="y", origin="r.csv"), make_params().data)
    assert list(prep.frame["label"]) == ["Positive", "Positive", "Positive", "negative", "negative", "negative",
                                         "Positive", "negative", "Positive"]


def test_batch_prediction_counts_a_label_in_another_case_as_its_class():
    model = SimpleNamespace(task=SimpleNamespace(compares_labels=True), manifest={"classes": ["No", "Yes"]})
    tally = Tally()
    for actual, label in [("YES", "Yes"), ("no", "Yes"), ("Yes", "Yes"), ("maybe", "No"), (None, "No")]:
        _agreement(model, {"actual": actual, "label": label}, tally)
    assert (tally.labelled, tally.correct) == (3, 2)
