"""Text classification data: validate and profile a corpus (collect), fit the tokenizer on the train
texts and encode the splits (split).

collect writes ``data.parquet`` with two columns, ``text`` (stripped) and ``label`` (class label
text: ``1`` -> ``"1"``, ``true`` -> ``"true"``), in file order. A text that is empty or only
whitespace, or a missing label, drops its row (counted and named in the profile) or, with
``data.empty_texts: error``, stops collect. The profile records the script: the share of letters
in CJK ranges (``cjk_fraction``), "cjk" at >= ``CJK_SCRIPT_MIN``, "latin" at <= ``LATIN_SCRIPT_MAX``
(any non-CJK script: the pre-tokenizer treats them alike), "mixed" between.

split fits a Hugging Face ``tokenizers`` WordLevel tokenizer on the train texts only: NFKC
(+ lowercase), then whitespace/punctuation splitting with each CJK character isolated (``word``) or
every character a token (``char``); ``<pad>`` is id 0 and ``<unk>`` id 1. Every split is encoded with
``pipelines.modalities.text.encode.encode``, the function the service uses.

Errors are ``DataError`` naming the file, the column and, where one row is at fault, its 0-based
data row (the header is not a row; JSONL rows also give the file line).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipelines.files import DataError
from pipelines.labels import label_spellings
from pipelines.params import DataParams, TextParams, section_dict
from pipelines.sources import TextTable
from pipelines.modalities.text.encode import PAD, PAD_ID, UNK, UNK_ID

log = logging.getLogger(__name__)

# Hiragana, Katakana (+ phonetic extensions, halfwidth forms), CJK ideographs (+ extension A,
# compatibility, supplementary planes). Hangul is left out: Korean separates words with spaces.
CJK_RANGES = (
    "\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f"
)
CJK_SCRIPT_MIN = 0.8
LATIN_SCRIPT_MAX = 0.05
MAX_ROWS_REPORTED = 5

_CJK = re.compile(f"[{CJK_RANGES}]")
_LETTER = re.compile(r"[^\W\d_]")  # a Unicode letter


@dataclass
class PreparedTexts:
    """A validated corpus ready to write: ``frame`` has ``text`` and ``label`` (``string`` dtype)."""

    frame: pd.DataFrame
    origin: str
    text_column: str
    target: str
    dropped: dict[str, Any] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)


def _row(table: TextTable, i: int) -> str:
    return f"row {i}" + (f" (line {table.lines[i]})" if table.lines else "")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def prepare_texts(table: TextTable, params: DataParams) -> PreparedTexts:
    """Check columns and values, drop (or reject) rows without text or label; raise ``DataError``."""
    where, frame = table.origin, table.frame.reset_index(drop=True)
    frame.columns = [str(c) for c in frame.columns]
    available = ", ".join(map(repr, frame.columns[:50])) + (" ..." if frame.shape[1] > 50 else "")
    for key, name in (("text", table.text), ("target", table.target)):
        if name not in frame.columns:
            raise DataError(f"{where}: column {name!r} (data.{key}) not found; available columns: {available}")
    if len(frame) == 0:
        raise DataError(f"{where}: no rows")
    texts = [_text_value(v, table, i) for i, v in enumerate(frame[table.text].tolist())]
    labels = [_label_value(v, table, i) for i, v in enumerate(frame[table.target].tolist())]
    empty = np.array([t is None for t in texts])
    missing = np.array([lab is None for lab in labels])
    bad_rows = np.flatnonzero(empty | missing)
    dropped = {"empty_text": int(empty.sum()), "missing_label": int(missing.sum()),
               "total": int(len(bad_rows)), "first_rows": bad_rows[:MAX_ROWS_REPORTED].tolist()}
    if len(bad_rows):
        what = (f"{dropped['empty_text']} row(s) with an empty text in column {table.text!r}, "
                f"{dropped['missing_label']} with a missing label in column {table.target!r} "
                f"(first: {', '.join(_row(table, int(i)) for i in bad_rows[:MAX_ROWS_REPORTED])})")
        if params.empty_texts == "error":
            raise DataError(f"{where}: {what}; rejected by data.empty_texts: error (drop: leave them out)")
        log.warning("%s: dropping %d of %d rows: %s", where, len(bad_rows), len(frame), what)
    keep = ~(empty | missing)
    if not keep.any():
        raise DataError(f"{where}: no rows left with both a text ({table.text!r}) and a label ({table.target!r})")
    kept = np.flatnonzero(keep)
    kept_labels = [labels[i] for i in kept]
    spelling = label_spellings(Counter(kept_labels), where, table.target)  # "Positive" and "positive": one class
    kept_labels = [spelling.get(lab, lab) for lab in kept_labels]
    out = pd.DataFrame({"text": [texts[i] for i in kept], "label": kept_labels}, dtype="string")
    classes = sorted(out["label"].unique())
    if len(classes) < 2:
        raise DataError(f"{where}: column {table.target!r}: a single class ({classes[0]!r}), need at least 2")
    checks = ["non_empty", "columns_present", "texts_are_strings", "labels_valid",
              "empty_texts_dropped" if len(bad_rows) else "no_empty_texts", "at_least_two_classes"]
    return PreparedTexts(out, where, table.text, table.target, dropped, checks)


def _text_value(value: Any, table: TextTable, i: int) -> str | None:
    """The stripped text, ``None`` when missing or blank; anything but a string is an error."""
    if _missing(value):
        return None
    if not isinstance(value, str):
        raise DataError(f"{table.origin}: {_row(table, i)}, column {table.text!r}: text must be a string, "
                        f"got {type(value).__name__} {value!r:.60}")
    return value.strip() or None


def _label_value(value: Any, table: TextTable, i: int) -> str | None:
    """A class label as text: strings stripped, ``True`` -> ``"true"``, ``1``/``1.0`` -> ``"1"``."""
    if _missing(value):
        return None
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and math.isfinite(value):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    if isinstance(value, str):
        return value.strip() or None
    raise DataError(f"{table.origin}: {_row(table, i)}, column {table.target!r}: expected a class label "
                    f"(string, number or boolean), got {type(value).__name__} {value!r:.60}")


def cjk_fraction(texts: pd.Series) -> float:
    """Share of letters that are CJK (Han, kana); 0.0 for a corpus without letters."""
    letters = cjk = 0
    for text in texts:
        letters += len(_LETTER.findall(text))
        cjk += len(_CJK.findall(text))
    return min(1.0, cjk / letters) if letters else 0.0


def script_of(fraction: float) -> str:
    if fraction >= CJK_SCRIPT_MIN:
        return "cjk"
    return "latin" if fraction <= LATIN_SCRIPT_MAX else "mixed"


def texts_hash(texts: pd.Series, labels: pd.Series) -> str:
    """Content hash of (text, label) pairs in order, length-prefixed so no separator can collide."""
    h = hashlib.sha256()
    for text, label in zip(texts, labels):
        for value in (text, label):
            raw = value.encode("utf-8")
            h.update(f"{len(raw)}:".encode() + raw)
    return h.hexdigest()


def text_profile(prep: PreparedTexts, params: DataParams, task: Any) -> dict[str, Any]:
    """profile.json for a text corpus: classes and balance (by ``task``), script, lengths, dropped
    rows, hash."""
    frame = prep.frame
    lengths = frame["text"].str.len().to_numpy(dtype=np.int64)
    fraction = cjk_fraction(frame["text"])
    return {
        "source": prep.origin, "task": task.name, "text_column": prep.text_column, "target": prep.target,
        "rows": int(len(frame)), **task.target_profile(frame["label"].to_numpy(dtype=str)),
        "script": script_of(fraction), "cjk_fraction": round(fraction, 4),
        "length_chars": {"min": int(lengths.min()), "mean": round(float(lengths.mean()), 2),
                         "p95": float(np.percentile(lengths, 95)), "max": int(lengths.max())},
        "dropped_rows": prep.dropped,
        "data_hash": texts_hash(frame["text"], frame["label"]),
        "checks_passed": prep.checks, "params": section_dict(params), "value_range": None,
    }


# ---------------------------------------------------------------- tokenizer (split)


def resolve_level(level: str, script: str) -> str:
    """``auto`` -> ``char`` for a CJK-script corpus, else ``word`` (which isolates CJK characters anyway)."""
    if level != "auto":
        return level
    return "char" if script == "cjk" else "word"


def build_tokenizer(level: str, lowercase: bool) -> Any:
    """An untrained WordLevel tokenizer: NFKC (+ lowercase), then the pre-tokenizer for ``level``."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    norm = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    tokenizer.normalizer = normalizers.Sequence(norm)
    if level == "char":
        pieces = [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), "isolated")]
    elif level == "word":
        pieces = [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated"),
                  pre_tokenizers.Split(Regex(f"[{CJK_RANGES}]"), "isolated")]
    else:
        raise ValueError(f"text.level: expected 'word' or 'char', got {level!r}")
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(pieces)
    return tokenizer


def fit_tokenizer(texts: list[str], p: TextParams, level: str) -> Any:
    """Vocabulary from ``texts`` (the train split): ``<pad>`` 0, ``<unk>`` 1, then by frequency."""
    from tokenizers import trainers

    tokenizer = build_tokenizer(level, p.lowercase)
    trainer = trainers.WordLevelTrainer(vocab_size=p.max_vocab, min_frequency=p.min_frequency,
                                        special_tokens=[PAD, UNK], show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    assert (tokenizer.token_to_id(PAD), tokenizer.token_to_id(UNK)) == (PAD_ID, UNK_ID)
    return tokenizer


def text_keys(texts: pd.Series) -> np.ndarray:
    """One 16-byte digest per text, as uint8 rows, for the cross-split duplicate check."""
    digests = b"".join(hashlib.blake2b(t.encode("utf-8"), digest_size=16).digest() for t in texts)
    return np.frombuffer(digests, dtype=np.uint8).reshape(len(texts), 16)
