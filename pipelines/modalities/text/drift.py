"""The text modality's drift features, per text, with the model's own tokenizer (``tokenizer.json``):

* ``text.chars`` and ``text.tokens``: its length in characters and in tokens (all of them, before
  ``max_len`` cuts it);
* ``text.unknown_share``: the share of its tokens outside the vocabulary (``<unk>``; a text without
  tokens counts as one unknown token, as the service reads it);
* ``text.surprisal``: the mean surprisal of its tokens, ``-log p(token)``, under the token frequencies of
  the train texts (the ``UNIGRAM`` most frequent tokens; the rest share what is left): texts of another
  domain use other words, and other words are rarer in the train texts;
* ``text.top_tokens``: the share of its tokens that are each of the train texts' most frequent tokens,
  ``<unk>``, or any other token. Each text weighs one item (a long text does not outvote a short one),
  so texts, not tokens, are the sample the chi-squared test counts;
* the network's penultimate layer (``embedding.*``, ``EMBEDDING``).

The token statistics come from the train texts and the reference texts are the validation split's
(``val.parquet``): a text that shaped the vocabulary or the frequencies looks more familiar to them
than any new text, so the texts they are measured on must be other texts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.drift import Categorical, Feature, Numeric, sample_rows
from pipelines.modalities.text.encode import PAD_ID, UNK, UNK_ID

TOP_TOKENS = 30
UNIGRAM = 2000
OTHER = "(other)"
EMBEDDING = True


def _texts(split_dir: Path, name: str, limit: int) -> list[str]:
    import pandas as pd

    texts = pd.read_parquet(Path(split_dir) / f"{name}.parquet", columns=["text"])["text"].tolist()
    return [texts[i] for i in sample_rows(len(texts), limit)]


def _ids(tokenizer: Any, texts: list[str]) -> list[np.ndarray]:
    return [np.asarray(e.ids, np.int64) for e in tokenizer.encode_batch_fast(texts, add_special_tokens=False)]


def context(split_dir: Path, state: dict[str, Any], side: Any) -> dict[str, Any]:
    """Token frequencies of the train texts: the most frequent tokens, and the log-probabilities of
    the ``UNIGRAM`` most frequent (``<pad>`` aside; add-one smoothed; the other tokens share the rest)."""
    tokenizer = side.tokenizer
    ids = _ids(tokenizer, _texts(split_dir, "train", 20_000))
    counts = np.bincount(np.concatenate(ids) if ids else np.zeros(0, np.int64),
                         minlength=tokenizer.get_vocab_size()).astype(np.float64)
    counts[PAD_ID] = 0
    order = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] > 0]
    kept = order[:UNIGRAM]
    total = counts.sum() + len(counts)
    tail = max((total - (counts[kept] + 1).sum()) / max(len(counts) - len(kept), 1), 1.0)
    return {"top_tokens": [tokenizer.id_to_token(i) for i in order if i != UNK_ID][:TOP_TOKENS],
            "unigram": {"tokens": [tokenizer.id_to_token(i) for i in kept],
                        "logp": np.round(np.log((counts[kept] + 1) / total), 4).tolist(),
                        "tail_logp": round(float(np.log(tail / total)), 4)},
            "max_len": side.max_len}


def reference_batches(split_dir: Path, state: dict[str, Any], name: str, side: Any, ctx: dict[str, Any],
                      limit: int) -> Iterator[tuple[list[str], None]]:
    texts = _texts(split_dir, name, limit)
    step = side.max_items
    for i in range(0, len(texts), step):
        yield texts[i:i + step], None


def _lookup(tokenizer: Any, tokens: list[str], values: Any, default: Any, dtype: Any) -> np.ndarray:
    """An array over the token ids: ``values[k]`` at the id of ``tokens[k]``, ``default`` elsewhere."""
    out = np.full(max(tokenizer.get_vocab_size(), 2), default, dtype)
    for token, value in zip(tokens, values):
        index = tokenizer.token_to_id(token)
        if index is not None:
            out[index] = value
    return out


def features(items: list[str], feeds: Any, side: Any, ctx: dict[str, Any]) -> dict[str, Feature]:
    tokenizer = side.tokenizer
    raw = _ids(tokenizer, list(items))
    # a text without tokens is read as one <unk>, as the service reads it
    ids = [seq if len(seq) else np.asarray([UNK_ID]) for seq in raw]
    top, unigram = ctx["top_tokens"], ctx["unigram"]
    column = _lookup(tokenizer, top, range(len(top)), len(top), np.int64)  # default: any other token
    column[UNK_ID] = len(top) + 1
    logp = _lookup(tokenizer, unigram["tokens"], unigram["logp"], unigram["tail_logp"], np.float64)
    shares = np.zeros((len(ids), len(top) + 2))
    surprisal = np.zeros(len(ids))
    for row, seq in enumerate(ids):
        shares[row] = np.bincount(column[seq], minlength=len(top) + 2) / len(seq)
        surprisal[row] = -logp[seq].mean()
    return {"text.chars": Numeric(np.asarray([len(t) for t in items], np.float64)),
            "text.tokens": Numeric(np.asarray([len(seq) for seq in raw], np.float64)),
            "text.unknown_share": Numeric(shares[:, -1].copy()),
            "text.surprisal": Numeric(surprisal),
            "text.top_tokens": Categorical(weights=shares, columns=[*top, OTHER, UNK])}
