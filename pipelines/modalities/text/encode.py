"""Texts -> token ids: the one encoder used by split (training data) and by the service.

The tokenizer is the ``tokenizer.json`` that split fitted on the train texts (Hugging Face
``tokenizers``, WordLevel: normalizer, pre-tokenizer and vocabulary all inside the file), so
training and serving tokenize with the same code and the same state. Only numpy and tokenizers
here: the service imports this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load ``tokenizer.json``; raise ``ValueError`` naming the file if it is not ours."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: tokenizer file not found")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
        raise ValueError(f"{path}: not a readable tokenizers JSON file: {exc}") from None
    ids = (tokenizer.token_to_id(PAD), tokenizer.token_to_id(UNK))
    if ids != (PAD_ID, UNK_ID):
        raise ValueError(f"{path}: expected {PAD!r} id {PAD_ID} and {UNK!r} id {UNK_ID}, got ids {ids}")
    return tokenizer


def encode(tokenizer: Tokenizer, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids of ``texts``, cut to ``max_len`` and right-padded with ``PAD_ID``.

    Returns ``(ids, lengths, truncated)``: ``ids`` int64 ``[N, max_len]``, ``lengths`` int64 ``[N]``
    (tokens kept; 0 only for an empty or whitespace-only text, which callers should reject) and
    ``truncated`` bool ``[N]`` (the text had more than ``max_len`` tokens). Words outside the
    vocabulary are ``UNK_ID``.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    texts = list(texts)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"text {bad}: expected a string, got {type(texts[bad]).__name__}")
    ids = np.full((len(texts), max_len), PAD_ID, dtype=np.int64)
    lengths = np.zeros(len(texts), dtype=np.int64)
    truncated = np.zeros(len(texts), dtype=np.bool_)
    for i, enc in enumerate(tokenizer.encode_batch_fast(texts, add_special_tokens=False)):
        row = enc.ids
        n = min(len(row), max_len)
        ids[i, :n] = row[:n]
        lengths[i] = n
        truncated[i] = len(row) > max_len
    return ids, lengths, truncated
