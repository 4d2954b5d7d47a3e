"""Batch prediction (``pipelines.predict``) over tiny deployed models of every modality: a churn table
(CSV, JSONL, Parquet), texts, digits images and photos (a folder, a CSV of paths).

Each run's predictions are compared with the service's own path run in-process on the same raw
items: the model's request side validates them and makes the graph inputs (``to_inputs``; photo
files through ``from_files`` as an upload), ONNX Runtime runs, the task's ``respond`` answers.
Bad rows and files must land in the errors CSV, named with a reason, while the rest is scored.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import TypeAdapter

from pipelines import predict
from pipelines.modalities.image.decode import decode_file
from serving.model import load_model_from
from tests.conftest import make_params
from tests.helpers import build_demo_model, build_photo_model, build_text_model
from tests.test_serving_tabular import PROFILE, build_tabular_model, churn_frame

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [c["name"] for c in PROFILE["columns"]]


# ---------------------------------------------------------------- helpers


def served(model: Any, items: list[Any]) -> list[dict[str, Any]]:
    """What the service answers for ``items`` (its request side, ONNX Runtime, the task), one
    request per ``max_items``; per-class probabilities flattened to ``p_<class>`` like the CSV."""
    side, out = model.requests, []
    adapter = None if getattr(side, "accepts_files", False) else TypeAdapter(side.items_type())
    for start in range(0, len(items), side.max_items):
        part = items[start:start + side.max_items]
        inputs = side.to_inputs(side.from_files(part) if adapter is None else adapter.validate_python(part))
        rows, _ = model.task.respond(model.run(inputs.feeds), model.manifest)
        out += [{**row, **extra} for row, extra in zip(rows, inputs.extras or [{}] * len(rows))]
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def check_same(got: list[dict[str, str]], want: list[dict[str, Any]], classes: list[str]) -> None:
    """The CSV's predictions equal the service's, label for label and probability for probability."""
    assert len(got) == len(want)
    assert [g["label"] for g in got] == [w["label"] for w in want]
    probs = np.array([[float(g[f"p_{c}"]) for c in classes] for g in got])
    np.testing.assert_allclose(probs, np.array([w["probabilities"] for w in want]), rtol=0, atol=1e-6)
    np.testing.assert_allclose([float(g["probability"]) for g in got], [w["probability"] for w in want], atol=1e-6)


def score(model: Any, source: Path, out: Path, **kw: Any) -> tuple[dict[str, Any], list[dict[str, str]],
                                                                    list[dict[str, str]]]:
    summary = predict.run(model, source, out, progress=False, **kw)
    return summary, read_csv(out), read_csv(predict.errors_path(out))


# ---------------------------------------------------------------- tables


@pytest.fixture(scope="module")
def table_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    model_dir = build_tabular_model(tmp_path_factory.mktemp("tab"), "classification")
    return load_model_from(model_dir, str(model_dir))


def messy_csv(path: Path, n: int = 40) -> list[str]:
    """A raw CSV as a user has it: an id and the target besides the model's columns, stray whitespace,
    NA spellings, integer codes; row 5 has junk in a numeric column, row 9 a field too many.
    Returns the bad row ids."""
    df = churn_frame(n, seed=3)
    df.insert(0, "customer_id", [f"c{i:03d}" for i in range(n)])
    text = df.drop(columns=["spend_next_year"]).astype(object).where(df.notna(), "NA").astype(str)
    text["gender"] = text["gender"].str.pad(3, side="left")
    text.loc[3, "age"], text.loc[4, "region"], text.loc[7, "monthly_spend"] = " 42 ", "", "null"
    text.loc[5, "age"] = "abc"
    buf = io.StringIO()
    text.to_csv(buf, index=False)
    lines = buf.getvalue().splitlines()
    lines[10] += ",extra"  # data row 9
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return ["5", "9"]


def test_table_csv_equals_the_service(table_model: Any, tmp_path: Path) -> None:
    source = tmp_path / "new.csv"
    bad = messy_csv(source)
    summary, got, errors = score(table_model, source, tmp_path / "preds.csv", batch_size=7)
    raw = read_csv(source)
    good = [i for i in range(len(raw)) if str(i) not in bad]
    want = served(table_model, [{c: raw[i][c] for c in COLUMNS} for i in good])  # the raw text, as sent
    check_same(got, want, ["No", "Yes"])
    # and the raw text gets what the clean values get (read as collect reads the file)
    clean = churn_frame(40, seed=3)[COLUMNS].astype(object)
    clean = clean.where(clean.notna(), None)
    clean.loc[3, "age"], clean.loc[4, "region"], clean.loc[7, "monthly_spend"] = 42, None, None
    check_same(got, served(table_model, [clean.loc[i].to_dict() for i in good]), ["No", "Yes"])
    assert [g["row"] for g in got] == [str(i) for i in good]
    assert [g["actual"] for g in got] == [raw[i]["churned"] for i in good]
    assert [e["row"] for e in errors] == bad
    assert "age" in errors[0]["reason"] and "abc" in errors[0]["reason"]
    assert "expected 7 fields" in errors[1]["reason"]
    assert (summary["read"], summary["scored"], summary["bad"]) == (40, 38, 2)
    assert summary["notes"]["missing_values"]["monthly_spend"] >= 1
    assert summary["label_agreement"]["rows"] == 38


def test_semicolon_and_tab_files_read_as_collect_reads_them(table_model: Any, tmp_path: Path) -> None:
    """A European Excel export (";" between fields, "42,5" decimal commas) and a TSV: the delimiter
    from the header, a ";" file's decimal commas as points, in collect and here alike."""
    from pipelines import collect

    df = churn_frame(30, seed=5)
    clean = df[COLUMNS].astype(object).where(df[COLUMNS].notna(), None)
    want = served(table_model, [clean.loc[i].to_dict() for i in range(30)])
    euro = df.astype(object).where(df.notna(), "").astype(str)
    for c in ("monthly_spend", "spend_next_year"):
        euro[c] = euro[c].str.replace(".", ",", regex=False)
    euro.to_csv(tmp_path / "euro.csv", sep=";", index=False)
    assert "," in (tmp_path / "euro.csv").read_text().splitlines()[1]
    df.to_csv(tmp_path / "tabs.tsv", sep="\t", index=False)
    for name in ("euro.csv", "tabs.tsv"):
        _, got, errors = score(table_model, tmp_path / name, tmp_path / f"{name}.preds.csv")
        assert errors == [] and len(got) == 30
        check_same(got, want, ["No", "Yes"])
    collect.run(make_params(data={"source": f"csv:{tmp_path / 'euro.csv'}", "target": "churned"}), tmp_path / "c")
    collected = pd.read_parquet(tmp_path / "c" / "data.parquet")
    np.testing.assert_allclose(collected["monthly_spend"], df["monthly_spend"])


def test_table_jsonl_and_parquet(table_model: Any, tmp_path: Path) -> None:
    df = churn_frame(30, seed=4)
    records = [{k: (None if isinstance(v, float) and np.isnan(v) or v is None else v) for k, v in row.items()}
               for row in df[COLUMNS].to_dict("records")]
    want = served(table_model, records)
    df.to_parquet(tmp_path / "new.parquet")
    _, got, errors = score(table_model, tmp_path / "new.parquet", tmp_path / "pq.csv", batch_size=8)
    check_same(got, want, ["No", "Yes"])
    assert errors == []

    lines = [json.dumps(r) for r in records]
    lines[2] = json.dumps({k: v for k, v in records[2].items() if k != "age"})  # absent key: missing, as in collect
    lines.insert(5, '{"age": 3')  # not JSON
    lines.insert(8, "[1, 2]")  # not an object
    (tmp_path / "new.jsonl").write_text("\n".join(lines) + "\n\n")
    _, got, errors = score(table_model, tmp_path / "new.jsonl", tmp_path / "jl.csv")
    want[2] = served(table_model, [{**records[2], "age": None}])[0]
    check_same(got, want, ["No", "Yes"])
    assert [(e["row"], e["reason"][:7]) for e in errors] == [("5", "line 6:"), ("8", "line 9:")]


@pytest.mark.slow  # a second tabular export (~4 s)
def test_table_regression_values(tmp_path: Path) -> None:
    model_dir = build_tabular_model(tmp_path / "reg", "regression")
    model = load_model_from(model_dir, str(model_dir))
    df = churn_frame(25, seed=6)
    df.to_csv(tmp_path / "new.csv", index=False)
    summary, got, errors = score(model, tmp_path / "new.csv", tmp_path / "p.csv")
    assert list(got[0]) == ["row", "value", "actual"] and errors == []
    want = served(model, [{c: (None if pd.isna(v) else v) for c, v in row.items()}
                          for row in df[COLUMNS].to_dict("records")])
    np.testing.assert_allclose([float(g["value"]) for g in got], [w["value"] for w in want], rtol=1e-6)
    np.testing.assert_allclose([float(g["actual"]) for g in got], df["spend_next_year"], rtol=1e-12)
    assert "label_agreement" not in summary


def test_unusable_inputs_fail_with_one_reason(table_model: Any, tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    with pytest.raises(predict.PredictError, match="no such file"):
        predict.run(table_model, tmp_path / "absent.csv", out, progress=False)
    with pytest.raises(predict.PredictError, match="a folder is read as image files"):
        predict.run(table_model, tmp_path, out, progress=False)
    (tmp_path / "cols.csv").write_text("age,gender\n1,F\n")
    with pytest.raises(predict.PredictError, match=r"no column\(s\) \['monthly_spend', 'region', 'contract'\]"):
        predict.run(table_model, tmp_path / "cols.csv", out, progress=False)
    (tmp_path / "empty.csv").write_text(",".join(COLUMNS) + "\n")
    with pytest.raises(predict.PredictError, match="no rows to score"):
        predict.run(table_model, tmp_path / "empty.csv", out, progress=False)
    assert not out.exists()
    (tmp_path / "junk.csv").write_text(",".join(COLUMNS) + "\nabc,1,F,north,monthly\nx,2,M,south,yearly\n")
    with pytest.raises(predict.PredictError, match="none of the 2 rows could be scored"):
        predict.run(table_model, tmp_path / "junk.csv", out, progress=False)
    assert len(read_csv(predict.errors_path(out))) == 2  # the reasons are kept


def test_a_file_that_is_not_utf8_is_named_with_the_fix(table_model: Any, tmp_path: Path) -> None:
    """A GBK export (a spreadsheet on a Chinese-locale machine): one line with the byte, the likely
    encodings and the iconv command, whether the bad byte is in the header or in a row."""
    out = tmp_path / "p.csv"
    (tmp_path / "head.csv").write_bytes(("年龄," + ",".join(COLUMNS) + "\n").encode("gbk"))
    with pytest.raises(predict.PredictError, match=r"head\.csv: not UTF-8 text \(byte 0x.. at byte 0; a GBK.*iconv"):
        predict.run(table_model, tmp_path / "head.csv", out, progress=False)
    rows = ",".join(COLUMNS) + "\n" + "1,2,F,north,monthly\n" * 1000  # past the reader's first 8 KiB
    (tmp_path / "rows.csv").write_bytes((rows + "1,2,F,北方,monthly\n").encode("gbk"))
    with pytest.raises(predict.PredictError, match=r"rows\.csv: not UTF-8 text after row .*a GBK.*iconv -f GBK"):
        predict.run(table_model, tmp_path / "rows.csv", out, progress=False)
    assert not out.exists()


# ---------------------------------------------------------------- texts


@pytest.fixture(scope="module")
def text_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    model_dir = build_text_model(tmp_path_factory.mktemp("text"), max_len=8)
    return load_model_from(model_dir, str(model_dir))


def test_texts_equal_the_service(text_model: Any, tmp_path: Path) -> None:
    texts = ["this movie was great", "", "服务很差，再也不来了", "   ", "x" * 10_001,
             "i love this phone , the battery lasts all day and the acting was wonderful too", "NA", "质量很好"]
    pd.DataFrame({"review": texts, "sentiment": ["positive"] * len(texts)}).to_csv(tmp_path / "r.csv", index=False)
    summary, got, errors = score(text_model, tmp_path / "r.csv", tmp_path / "p.csv", batch_size=3, column="review")
    good = [0, 2, 3, 5, 6, 7]
    want = served(text_model, [texts[i] for i in good])
    check_same(got, want, ["negative", "positive"])
    assert [g["row"] for g in got] == [str(i) for i in good]
    assert [(g["tokens"], g["truncated"]) for g in got] == [(str(w["tokens"]), str(w["truncated"])) for w in want]
    assert [(e["row"], e["reason"]) for e in errors] == [
        ("1", "empty text"), ("4", "text too long: 10001 characters, the limit is 10000")]
    assert summary["notes"]["no_tokens"] == 1
    assert summary["notes"]["truncated"] == sum(w["truncated"] for w in want) == 2
    assert summary["notes"]["max_len"] == 8

    # JSONL with the usual column name: found without --column; a non-string text is a bad row
    texts = ["worst purchase ever", 42, "这部电影太好看了"]
    lines = [json.dumps({"id": i, "text": t}) for i, t in enumerate(texts)]
    (tmp_path / "t.jsonl").write_text("\n".join([*lines, '"a bare string"']))
    _, got, errors = score(text_model, tmp_path / "t.jsonl", tmp_path / "j.csv")
    check_same(got, served(text_model, ["worst purchase ever", "这部电影太好看了"]), ["negative", "positive"])
    assert errors[0]["row"] == "1" and "expected a string" in errors[0]["reason"]
    assert errors[1] == {"row": "3", "reason": "line 4: expected a JSON object, got str"}
    with pytest.raises(predict.PredictError, match="pass --column"):
        predict.run(text_model, tmp_path / "r.csv", tmp_path / "p.csv", progress=False)


# ---------------------------------------------------------------- images


def save_image(path: Path, pixels: np.ndarray, mode: str = "L", fmt: str | None = None) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode).save(path, format=fmt)
    return path


def image_folder(root: Path, mode: str, n: int = 9) -> list[str]:
    """``n`` images of several sizes and formats in a nested folder, plus a corrupt, an empty and a
    non-image file; returns the good files' relative paths in the order a folder run lists them."""
    rng = np.random.default_rng(0)
    good = []
    for i in range(n):
        h, w = 8 + 3 * i, 20 - i
        pixels = rng.integers(0, 256, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
        name = f"{'sub/' if i % 3 == 0 else ''}img{i}.{('png', 'jpg', 'bmp')[i % 3]}"
        save_image(root / name, pixels, mode)
        good.append(name)
    save_image(root / "sub/rgb.png", rng.integers(0, 256, (10, 10, 3), dtype=np.uint8), "RGB")  # any mode goes
    good.append("sub/rgb.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "empty.jpg").write_bytes(b"")
    (root / "readme.txt").write_text("not an image: skipped, not an error")
    return sorted(good, key=lambda p: (p.count("/"), p))  # os.walk: a folder's files before its sub-folders


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    model_dir = build_demo_model(tmp_path_factory.mktemp("digits"))
    return load_model_from(model_dir, str(model_dir))


def test_digits_folder_equals_the_service(digits_model: Any, tmp_path: Path) -> None:
    good = image_folder(tmp_path / "imgs", "L")
    summary, got, errors = score(digits_model, tmp_path / "imgs", tmp_path / "p.csv", batch_size=4)
    # the service takes raw 0..16 pixel lists: the file decoded to 8x8 gray, 0..255 scaled onto 0..16
    items = [(decode_file(tmp_path / "imgs" / name, (8, 8), 1)[0] * (16 / 255)).tolist() for name in good]
    check_same(got, served(digits_model, items), [str(i) for i in range(10)])
    assert [g["path"] for g in got] == good
    assert sorted((e["path"], e["reason"].split(":")[0]) for e in errors) == [
        ("broken.png", "broken.png"), ("empty.jpg", "empty.jpg")]
    assert summary["skipped_files"] == 1 and summary["bad"] == 2


@pytest.fixture(scope="module")
def photo_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    model_dir = build_photo_model(tmp_path_factory.mktemp("photo"), channels=3, size=(12, 10))
    return load_model_from(model_dir, str(model_dir))


def test_photos_folder_and_csv_equal_the_upload(photo_model: Any, tmp_path: Path) -> None:
    root = tmp_path / "photos"
    good = image_folder(root, "RGB", n=5)
    _, got, errors = score(photo_model, root, tmp_path / "p.csv", batch_size=3)
    classes = photo_model.manifest["classes"]
    check_same(got, served(photo_model, [(name, (root / name).read_bytes()) for name in good]), classes)
    assert [g["path"] for g in got] == good and [g["name"] for g in got] == good
    assert sorted(e["path"] for e in errors) == ["broken.png", "empty.jpg"]

    # a table of paths, relative to its own folder; a missing file and an empty cell are bad rows
    listing = pd.DataFrame({"image": [good[0], "nowhere.png", "", good[1]], "label": ["cat", "dog", "cat", "bird"]})
    listing.to_csv(root / "list.csv", index=False)
    summary, got, errors = score(photo_model, root / "list.csv", tmp_path / "c.csv")
    check_same(got, served(photo_model, [(n, (root / n).read_bytes()) for n in (good[0], good[1])]), classes)
    assert [g["path"] for g in got] == [good[0], good[1]]
    assert [e["path"] for e in errors] == ["nowhere.png", "row 2"]  # in the table's order
    assert "cannot read" in errors[0]["reason"] and "expected a file path" in errors[1]["reason"]


# ---------------------------------------------------------------- the command


def test_cli_scores_a_folder_and_fails_in_one_line(digits_model: Any, tmp_path: Path) -> None:
    image_folder(tmp_path / "imgs", "L", n=3)
    model_dir = Path(digits_model.source)
    cmd = [sys.executable, "-m", "pipelines.predict", "--input", str(tmp_path / "imgs"), "--output",
           str(tmp_path / "out" / "preds.csv"), "--model", str(model_dir), "--batch-size", "2"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["read"], summary["scored"], summary["bad"]) == (6, 4, 2)
    assert "scored 4 of 6" in done.stderr and "preds.errors.csv" in done.stderr
    assert len(read_csv(tmp_path / "out" / "preds.csv")) == 4
    assert len(read_csv(tmp_path / "out" / "preds.errors.csv")) == 2

    done = subprocess.run(cmd[:-4] + ["--model", str(tmp_path / "nothing")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert [ln for ln in done.stderr.splitlines() if ln.startswith("error:")] == [
        f"error: {tmp_path / 'nothing' / 'manifest.json'}: not found (run the deploy stage, or set DLOPS_MODEL_DIR / "
        "DLOPS_MODEL_URI)"]
    assert "Traceback" not in done.stderr
