"""Text classification data: CSV/JSONL sources, collect's checks and profile, the tokenizer fitted
on train only, and the one encoder shared by split and serving."""

import json

import numpy as np
import pandas as pd
import pytest

from pipelines import collect, split
from pipelines.data import load_split
from pipelines.files import DataError, load_arrays
from pipelines.params import ParamsError, parse_params
from pipelines.modalities.text.encode import encode, load_tokenizer
from tests.conftest import ROOT, make_params

POS = ["great", "wonderful", "loved", "brilliant", "moving", "superb"]
NEG = ["awful", "boring", "hated", "terrible", "dull", "messy"]
FILLER = ["the", "film", "plot", "acting", "was", "and", "really", "story", "cast", "ending", "quite"]
ZH_SUBJECT = ["这部电影", "这个故事", "今天看的片子", "演员的表演"]
ZH_POS = ["太好看了", "非常精彩", "很感人", "值得一看"]
ZH_NEG = ["太难看了", "非常无聊", "很失望", "浪费时间"]


def english_reviews(n: int = 160, seed: int = 0) -> pd.DataFrame:
    """Reviews whose sentiment words carry the label; every row also has a word of its own."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = list(rng.choice(FILLER, rng.integers(3, 9))) + list(rng.choice(POS if label == "pos" else NEG, 2))
        rng.shuffle(words)
        rows.append({"id": i, "review": " ".join(words).capitalize() + f" uniq{i}!", "sentiment": label})
    return pd.DataFrame(rows)


def chinese_reviews(n: int = 120, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = i % 2
        text = str(rng.choice(ZH_SUBJECT)) + str(rng.choice(ZH_POS if label else ZH_NEG)) + "。"
        rows.append({"content": text, "label": label})
    return rows


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def run_text(tmp_path, source, text, target, text_params=None, **data):
    params = make_params(data={"source": source, "text": text, "target": target, **data}, text=text_params or {})
    collect.run(params, tmp_path / "collect")
    split.run(params, tmp_path / "collect", tmp_path / "split")
    read = lambda d, f: json.loads((tmp_path / d / f).read_text())  # noqa: E731
    return read("collect", "profile.json"), read("split", "split.json"), read("split", "preprocess.json")


@pytest.fixture(scope="module")
def english(tmp_path_factory):
    """English CSV with an empty text, a whitespace-only text and a missing label, collected + split."""
    base = tmp_path_factory.mktemp("english")
    frame = english_reviews()
    frame.loc[5, "review"] = ""
    frame.loc[12, "review"] = "   \t "
    frame.loc[20, "sentiment"] = None
    path = base / "reviews.csv"
    frame.to_csv(path, index=False)
    out = run_text(base, f"csv:{path}", "review", "sentiment", {"min_frequency": 1, "max_len": 8})
    return (base, frame) + out


def test_english_collect_contract(english):
    base, frame, prof, _, _ = english
    data = pd.read_parquet(base / "collect" / "data.parquet")
    assert list(data.columns) == ["text", "label"] and len(data) == len(frame) - 3
    assert all(isinstance(t, str) and t == t.strip() and t for t in data["text"])
    assert prof["kind"] == "text" and prof["task"] == "classification" and prof["value_range"] is None
    assert (prof["text_column"], prof["target"], prof["rows"]) == ("review", "sentiment", len(frame) - 3)
    assert prof["classes"] == ["neg", "pos"] and prof["num_classes"] == 2
    assert prof["class_balance"] == {"neg": 79, "pos": 78} and prof["imbalance_ratio"] == round(79 / 78, 3)
    assert prof["script"] == "latin" and prof["cjk_fraction"] == 0.0
    assert prof["dropped_rows"] == {"empty_text": 2, "missing_label": 1, "total": 3, "first_rows": [5, 12, 20]}
    lengths = data["text"].str.len()
    assert prof["length_chars"]["min"] == lengths.min() and prof["length_chars"]["max"] == lengths.max()
    assert prof["length_chars"]["mean"] == round(lengths.mean(), 2)
    assert len(prof["data_hash"]) == 64 and "at_least_two_classes" in prof["checks_passed"]
    assert prof["params"]["text"] == "review" and prof["params"]["empty_texts"] == "drop"


def test_english_split_contract(english):
    base, _, prof, info, state = english
    out = base / "split"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["tokenizer.json", "preprocess.json", "split.json"] + [f"{s}.{e}" for s in ("train", "val", "test")
                                                               for e in ("npz", "parquet")])
    assert info["kind"] == "text" and info["task"] == "classification" and info["input_shape"] == [8]
    assert info["classes"] == prof["classes"] and info["stratified_on"] == "classes"
    assert info["value_range"] is None and info["data_hash"] == prof["data_hash"]
    assert sum(info["sizes"].values()) == prof["rows"]
    assert info["leakage"]["index_overlap"] == {"train&val": 0, "train&test": 0, "val&test": 0}
    assert state["kind"] == "text" and state["tokenizer"] == "tokenizer.json" and state["level"] == "word"
    assert (state["pad_id"], state["unk_id"], state["max_len"]) == (0, 1, 8)
    data = pd.read_parquet(base / "collect" / "data.parquet")
    for name in ("train", "val", "test"):
        arrays = load_arrays(out / f"{name}.npz", "X", "y", "index", "lengths")
        X, y, lengths = arrays["X"], arrays["y"], arrays["lengths"]
        assert X.dtype == np.int64 and y.dtype == np.int64 and X.shape == (info["sizes"][name], 8)
        assert np.all((lengths >= 1) & (lengths <= 8))
        assert np.all(X[np.arange(8)[None, :] >= lengths[:, None]] == 0)  # right-padded with <pad>
        assert np.all(X[np.arange(8)[None, :] < lengths[:, None]] != 0)
        raw = pd.read_parquet(out / f"{name}.parquet")
        assert list(raw.columns) == ["text", "label"]
        assert raw["text"].tolist() == data["text"].iloc[arrays["index"]].tolist()
        assert [prof["classes"][i] for i in y] == raw["label"].tolist()
        assert info["class_counts"][name] == np.bincount(y, minlength=2).tolist()
    X, _ = load_split(out, "train")  # apply_preprocess leaves token ids alone
    assert X.dtype == np.int64


def test_tokenizer_is_fitted_on_train_only(english):
    base, _, _, _, state = english
    out = base / "split"
    vocab = set(load_tokenizer(out / "tokenizer.json").get_vocab())
    raw = {s: pd.read_parquet(out / f"{s}.parquet")["text"] for s in ("train", "val", "test")}
    words = {s: {w.strip("!").lower() for t in texts for w in t.split()} for s, texts in raw.items()}
    assert vocab - {"<pad>", "<unk>", "!"} == words["train"]
    only_test = words["test"] - words["train"]
    assert only_test and not only_test & vocab  # each row's own word: uniq<i>
    # untruncated, the test rows' own words are <unk>; the train split has none
    tokenizer = load_tokenizer(out / "tokenizer.json")
    ids = {s: encode(tokenizer, raw[s].tolist(), 64)[0] for s in ("train", "test")}
    assert not (ids["train"] == 1).any() and (ids["test"] == 1).any(axis=1).all()
    assert state["vocab_size"] == len(vocab)


def test_encode_matches_split_and_truncation_is_counted(english):
    base, _, _, _, state = english
    out = base / "split"
    tokenizer = load_tokenizer(out / "tokenizer.json")
    for name in ("train", "val", "test"):
        texts = pd.read_parquet(out / f"{name}.parquet")["text"].tolist()
        ids, lengths, truncated = encode(tokenizer, texts, 8)
        arrays = load_arrays(out / f"{name}.npz", "X", "lengths")
        np.testing.assert_array_equal(ids, arrays["X"])
        np.testing.assert_array_equal(lengths, arrays["lengths"])
        # words + "!" (punctuation is its own token), counted independently of the tokenizer
        n_tokens = np.array([len(t.split()) + 1 for t in texts])
        assert state["truncated"][name] == int(truncated.sum()) == int((n_tokens > 8).sum())
        assert 0 < state["truncated"][name] < len(texts)


def test_english_signal_is_learnable_from_token_ids(english):
    from sklearn.linear_model import LogisticRegression

    base, _, _, _, state = english

    def bag(name):
        a = load_arrays(base / "split" / f"{name}.npz", "X", "y")
        counts = np.zeros((len(a["X"]), state["vocab_size"]))
        np.add.at(counts, (np.repeat(np.arange(len(a["X"])), a["X"].shape[1]), a["X"].ravel()), 1)
        return counts[:, 2:], a["y"]

    clf = LogisticRegression(max_iter=1000).fit(*bag("train"))
    assert clf.score(*bag("test")) >= 0.9


def test_chinese_jsonl_is_character_level_auto(tmp_path):
    path = write_jsonl(tmp_path / "zh.jsonl", chinese_reviews())
    prof, info, state = run_text(tmp_path, f"jsonl:{path}", "content", "label")
    assert prof["script"] == "cjk" and prof["cjk_fraction"] == 1.0 and prof["classes"] == ["0", "1"]
    assert state["level"] == "char" and state["level_param"] == "auto"
    vocab = load_tokenizer(tmp_path / "split" / "tokenizer.json").get_vocab()
    assert {"好", "看", "电", "影", "。"} <= set(vocab) and all(len(t) == 1 for t in vocab if t[0] != "<")
    assert state["unk_rate"]["test"] == 0.0 and state["truncated"] == {"train": 0, "val": 0, "test": 0}
    assert info["leakage"]["cross_split_duplicates"] > 0  # 32 distinct texts in 120 rows: reported, not fatal


def test_level_override_and_mixed_script(tmp_path):
    rows = [{"t": r["content"], "y": r["label"]} for r in chinese_reviews(60)]
    rows += [{"t": t, "y": int(s == "pos")} for t, s in english_reviews(60)[["review", "sentiment"]].to_numpy()]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    prof, _, state = run_text(tmp_path / "a", f"jsonl:{path}", "t", "y", {"level": "auto", "min_frequency": 1})
    assert prof["script"] == "mixed" and 0.05 < prof["cjk_fraction"] < 0.8 and state["level"] == "word"
    tokenizer = load_tokenizer(tmp_path / "a" / "split" / "tokenizer.json")
    tokens = tokenizer.encode("这部电影 Great film!").tokens
    assert tokens == ["这", "部", "电", "影", "great", "film", "!"]
    _, _, state = run_text(tmp_path / "b", f"jsonl:{path}", "t", "y", {"level": "char", "lowercase": False})
    tokenizer = load_tokenizer(tmp_path / "b" / "split" / "tokenizer.json")
    assert state["level"] == "char" and not state["lowercase"]
    assert tokenizer.normalizer.normalize_str("Great") == "Great"
    assert [t for t, _ in tokenizer.pre_tokenizer.pre_tokenize_str("Great 电影!")] == list("Great电影!")


def test_empty_texts_error_names_rows_and_columns(tmp_path):
    frame = english_reviews(20)
    frame.loc[[3, 7], "review"] = " "
    frame.loc[9, "sentiment"] = None
    frame.to_csv(tmp_path / "r.csv", index=False)
    params = make_params(data={"source": f"csv:{tmp_path / 'r.csv'}", "text": "review", "target": "sentiment",
                               "empty_texts": "error"})
    with pytest.raises(DataError, match=r"2 row\(s\) with an empty text in column 'review', 1 with a missing "
                                        r"label in column 'sentiment' \(first: row 3, row 7, row 9\).*empty_texts"):
        collect.run(params, tmp_path / "collect")
    assert not (tmp_path / "collect").exists()


def test_na_spellings_are_text_in_csv(tmp_path):
    frame = english_reviews(20)
    frame.loc[4, "review"] = "NA"
    frame.to_csv(tmp_path / "r.csv", index=False)
    params = make_params(data={"source": f"csv:{tmp_path / 'r.csv'}", "text": "review", "target": "sentiment"})
    collect.run(params, tmp_path / "c")
    assert pd.read_parquet(tmp_path / "c" / "data.parquet")["text"].iloc[4] == "NA"


def _jsonl_error(tmp_path, rows, match, text="text", target="label", raw=None):
    path = tmp_path / "d.jsonl"
    if raw is None:
        write_jsonl(path, rows)
    else:
        path.write_text(raw)
    params = make_params(data={"source": f"jsonl:{path}", "text": text, "target": target})
    with pytest.raises(DataError, match=match):
        collect.run(params, tmp_path / "collect")


def test_errors_name_file_row_and_column(tmp_path):
    good = [{"text": f"fine text {i}", "label": i % 2} for i in range(6)]
    _jsonl_error(tmp_path, good, r"d\.jsonl: column 'review' \(data\.text\) not found; available columns: "
                                 r"'text', 'label'", text="review")
    _jsonl_error(tmp_path, good, r"column 'y' \(data\.target\) not found", target="y")
    lines = [json.dumps(r) for r in good[:2] + [{"text": 42, "label": 1}] + good]
    _jsonl_error(tmp_path, None, r"d\.jsonl: row 2 \(line 4\), column 'text': text must be a string, got int 42",
                 raw="\n".join(lines[:1] + [""] + lines[1:]) + "\n")  # a blank line 2: rows and lines differ
    _jsonl_error(tmp_path, good + [{"text": "x", "label": [1]}], r"row 6 \(line 7\), column 'label': expected a class")
    _jsonl_error(tmp_path, None, r"d\.jsonl: line 2: not valid JSON", raw='{"text": "a", "label": 1}\n{"text": \n')
    _jsonl_error(tmp_path, None, r"line 1: expected a JSON object, got list", raw='["a", 1]\n')
    _jsonl_error(tmp_path, [{"text": f"t{i}", "label": "same"} for i in range(5)],
                 r"column 'label': a single class \('same'\), need at least 2")
    _jsonl_error(tmp_path, [{"text": "", "label": 1}, {"text": "a", "label": None}], r"no rows left")
    (tmp_path / "bad.csv").write_bytes(b"text,label\n\xff\xfe\x00bad,1\n")
    params = make_params(data={"source": f"csv:{tmp_path / 'bad.csv'}", "text": "text", "target": "label"})
    with pytest.raises(DataError, match=r"bad\.csv: not UTF-8 text \(byte 0xff at byte \d+; .*iconv"):
        collect.run(params, tmp_path / "collect")


def test_parquet_text_source(tmp_path):
    frame = english_reviews(30)[["review", "sentiment"]]
    frame.to_parquet(tmp_path / "r.parquet")
    params = make_params(data={"source": f"parquet:{tmp_path / 'r.parquet'}", "text": "review", "target": "sentiment"})
    assert collect.run(params, tmp_path / "c")["rows"] == 30
    frame.assign(review=range(30)).to_parquet(tmp_path / "n.parquet")
    params = make_params(data={"source": f"parquet:{tmp_path / 'n.parquet'}", "text": "review", "target": "sentiment"})
    with pytest.raises(DataError, match=r"n\.parquet: row 0, column 'review': text must be a string, got int 0"):
        collect.run(params, tmp_path / "c2")


@pytest.mark.parametrize(("data", "named"), [
    ({"source": "sklearn:digits", "text": "t"}, r"data\.text: 'sklearn:digits' is not a text source"),
    ({"source": "jsonl:x.jsonl", "text": "t"}, r"data\.target: required .* label column"),
])
def test_text_param_errors_at_load(tmp_path, monkeypatch, data, named):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamsError, match=named):
        collect.run(make_params(data=data), tmp_path / "collect")


@pytest.mark.parametrize(("raw", "named"), [
    ({"data": {"source": "csv:a.csv", "text": "t", "target": "t"}}, r"data\.text: 't' is also the label"),
    ({"data": {"source": "csv:a.csv", "text": "t", "target": "y", "task": "regression"}}, r"data\.task"),
    ({"data": {"empty_texts": "keep"}}, r"data\.empty_texts: expected one of 'drop', 'error'"),
    ({"text": {"level": "bpe"}}, r"text\.level"),
    ({"text": {"max_len": 0}}, r"text\.max_len: must be >= 1"),
    ({"text": {"max_vocab": 2}}, r"text\.max_vocab: must be >= 3"),
    ({"text": {"lowercase": "yes"}}, r"text\.lowercase: expected bool"),
    ({"text": {"vocab": 5}}, r"text\.vocab: unknown key"),
])
def test_text_params_are_checked(raw, named):
    with pytest.raises(ParamsError, match=named):
        parse_params(raw)


def test_encode_contract(tmp_path):
    from pipelines.params import TextParams
    from pipelines.modalities.text.corpus import fit_tokenizer

    tokenizer = fit_tokenizer(["a b c", "a b", "a"], TextParams(min_frequency=1), "word")
    ids, lengths, truncated = encode(tokenizer, ["a b c zzz", "", "c"], 3)
    assert ids.dtype == lengths.dtype == np.int64 and truncated.dtype == np.bool_
    vocab = tokenizer.get_vocab()
    assert ids.tolist() == [[vocab["a"], vocab["b"], vocab["c"]], [0, 0, 0], [vocab["c"], 0, 0]]
    assert lengths.tolist() == [3, 0, 1] and truncated.tolist() == [True, False, False]
    assert encode(tokenizer, ["zzz"], 2)[0].tolist() == [[1, 0]]
    with pytest.raises(TypeError, match="text 1: expected a string"):
        encode(tokenizer, ["a", None], 3)
    tokenizer.save(str(tmp_path / "ok.json"))
    assert load_tokenizer(tmp_path / "ok.json").get_vocab() == vocab
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json: not a readable tokenizers JSON"):
        load_tokenizer(tmp_path / "bad.json")


def test_serving_encoder_imports_no_torch_or_pandas():
    import subprocess
    import sys

    code = "import sys, pipelines.modalities.text.encode; print(sorted(m for m in ('torch', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    assert out.stdout.strip() == "[]"
