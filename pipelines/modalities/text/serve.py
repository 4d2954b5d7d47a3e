"""The text modality's request side (``TextRequests``): raw texts validated, tokenized with the
model's own tokenizer and trimmed of all-padding columns.

As for images, ``check_texts`` walks the raw JSON first and stops at the first problem, so
an error names one text by its index and the response stays small however bad the request is; the
typed field then documents the schema (/docs.json). A text longer than the model's ``max_len`` tokens
is not an error: it is truncated (as in training) and the response says so. So is what the model did not
understand: each prediction carries the share of its tokens outside the vocabulary (``<unk>``), and a
``note`` when that share is over ``MOSTLY_UNKNOWN`` (an emoji-only text, another language, a
misspelling-ridden one): the prediction is then mostly the model's prior, however confident it looks.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

import numpy as np
from pydantic import BeforeValidator, Field
from pydantic_core import PydanticCustomError

from pipelines.modalities.schema import Inputs, RequestSide, describe as _describe
from pipelines.modalities.text.encode import PAD_ID  # the padding id training used

MAX_TEXTS = 128  # per request
MAX_TEXT_CHARS = 10_000  # per text: far past any max_len in tokens, and it bounds tokenizer work
# 128 texts of 10,000 characters of UTF-8 (3 bytes a CJK character) fit; ASCII-escaped JSON (\uXXXX,
# 6 bytes a character, Python's json.dumps default) fits 64 of them
MAX_BODY_BYTES = 4 * 1024 * 1024
MIN_WIDTH = 2  # columns kept by trim_padding (see there)
MOSTLY_UNKNOWN = 0.5  # share of <unk> tokens above which a prediction gets a note

__all__ = ["MAX_BODY_BYTES", "MAX_TEXTS", "MAX_TEXT_CHARS", "MOSTLY_UNKNOWN", "Texts", "check_texts", "trim_padding",
           "unknown_notes", "TextRequests"]


def _fail(where: str, problem: str, shown: str = "") -> PydanticCustomError:
    return PydanticCustomError("invalid_texts", "{where}: {problem}{shown}",
                               {"where": where, "problem": problem, "shown": f", got {shown}" if shown else ""})


def check_texts(texts: Any) -> Any:
    """Raise on the first structural, type, emptiness or length problem; return the input as is."""
    if not isinstance(texts, list):
        hint = ' (a single text? wrap it in a list: {"texts": ["..."]})' if isinstance(texts, str) else ""
        raise _fail("texts", f"expected a list of strings{hint}", _describe(texts))
    if not 1 <= len(texts) <= MAX_TEXTS:
        raise _fail("texts", f"expected 1 to {MAX_TEXTS} texts per request, got {len(texts)}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise _fail(f"texts[{i}]", "expected a string", _describe(text))
        if not text:
            raise _fail(f"texts[{i}]", "empty text")
        if len(text) > MAX_TEXT_CHARS:
            raise _fail(f"texts[{i}]", f"text too long: {len(text)} characters, the limit is {MAX_TEXT_CHARS}")
    return texts


Texts = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]],
    BeforeValidator(check_texts),
    Field(min_length=1, max_length=MAX_TEXTS,
          description=f"1 to {MAX_TEXTS} texts (any language the tokenizer was fitted on), each 1 to "
                      f"{MAX_TEXT_CHARS} characters; a text without tokens (whitespace only) is read as one "
                      "unknown token and flagged, a text over the model's max_len tokens is truncated (see "
                      "/metadata) and flagged",
          examples=[["这部电影太好看了", "worst purchase ever"]]),
]


def trim_padding(ids: np.ndarray) -> np.ndarray:
    """Drop the trailing columns that are padding in every row: the model's output does not depend on
    trailing padding, so short texts run on a short tensor. At least 2 columns stay: torch.export traces a dynamic axis as
    >= 2 and deploy's parity check runs widths >= 2 only, so a width of 1 is never trusted."""
    used = np.flatnonzero((ids != PAD_ID).any(axis=0))
    width = max(int(used[-1]) + 1 if used.size else 0, MIN_WIDTH)
    return np.ascontiguousarray(ids[:, :width])


def unknown_notes(ids: np.ndarray, lengths: np.ndarray) -> tuple[list[float], list[str | None]]:
    """Per text: the share of the tokens read that are ``<unk>`` (1.0 for a text without tokens, read
    as one unknown token) and a note when it is over ``MOSTLY_UNKNOWN``, else ``None``."""
    from pipelines.modalities.text.encode import UNK_ID

    unknown = (ids == UNK_ID).sum(axis=1)
    read = np.maximum(lengths, 1)  # a text without tokens is read as one <unk>
    shares = [round(float(u / n), 4) for u, n in zip(unknown, read)]
    notes = [None if share <= MOSTLY_UNKNOWN else
             "no tokens: the tokenizer found nothing to read in this text (whitespace or control characters), "
             "so the model read one unknown token and the prediction says nothing about the text" if length == 0
             else f"mostly unknown to the model: {int(u)} of {int(n)} tokens ({share:.0%}) are not in its vocabulary, "
             "so the prediction says little about this text"
             for share, u, n, length in zip(shares, unknown, read, lengths)]
    return shares, notes


class TextRequests(RequestSide):
    """``{"texts": [...]}``: raw texts, tokenized by ``encode.encode`` with the model's own
    ``tokenizer.json`` (the function and file split used), cut to max_len (flagged per text)."""

    field = "texts"
    max_items = MAX_TEXTS
    max_body_bytes = MAX_BODY_BYTES

    def __init__(self, manifest: dict[str, Any], model_dir: Any) -> None:
        from pathlib import Path

        from pipelines.files import sha256_file
        from pipelines.modalities.text.encode import load_tokenizer

        super().__init__(manifest, model_dir)
        spec = manifest["input"]
        max_len = spec.get("max_len") if isinstance(spec, dict) else None
        if (not isinstance(spec, dict) or spec.get("kind") != "texts" or spec.get("dtype") != "int64"
                or type(max_len) is not int or max_len < 1 or not isinstance(spec.get("tokenizer"), str)
                or not isinstance(spec.get("tokenizer_sha256"), str)):
            raise ValueError(f"text input must be {{'kind': 'texts', 'name', 'dtype': 'int64', 'max_len' >= 1, "
                             f"'tokenizer', 'tokenizer_sha256'}}, got {spec}")
        path = Path(model_dir) / spec["tokenizer"]
        if not path.is_file():
            raise ValueError(f"{path}: tokenizer named by the manifest not found")
        digest = sha256_file(path)
        if digest != spec["tokenizer_sha256"]:
            raise ValueError(f"{path}: sha256 {digest} != manifest tokenizer_sha256 {spec['tokenizer_sha256']}")
        self.tokenizer = load_tokenizer(path)  # ValueError unless <pad> is 0 and <unk> 1
        self.max_len = max_len

    def items_type(self) -> Any:
        return Texts

    def check(self, session: Any) -> None:
        inputs = session.get_inputs()
        if [i.name for i in inputs] != [self.input_name] or inputs[0].type != "tensor(int64)":
            raise ValueError(f"graph inputs {[(i.name, i.type) for i in inputs]} do not match the manifest's "
                             f"int64 {self.input_name!r}")
        if len(inputs[0].shape) != 2 or any(isinstance(d, int) for d in inputs[0].shape):
            raise ValueError(f"input shape {inputs[0].shape}: both axes (batch, seq) must be dynamic")

    def to_inputs(self, items: Any) -> Inputs:
        from pipelines.modalities.text.encode import UNK_ID, encode

        ids, lengths, truncated = encode(self.tokenizer, items, self.max_len)
        # a text the tokenizer reduces to nothing (whitespace, control characters) is read as one
        # unknown token, and flagged: tokens 0
        ids[lengths == 0, 0] = UNK_ID
        shares, notes = unknown_notes(ids, lengths)
        extras = [{"tokens": int(n), "truncated": bool(t), "unknown_share": share, "note": note}
                  for n, t, share, note in zip(lengths, truncated, shares, notes)]
        return Inputs({self.input_name: trim_padding(ids)}, extras,
                      {"truncated": int(truncated.sum()), "no_tokens": int((lengths == 0).sum()),
                       "mostly_unknown": sum(note is not None for note in notes), "max_len": self.max_len})

    def extra_fields(self) -> dict[str, Any]:
        return {"tokens": (int, Field(description="tokens of the text the model read (at most max_len; 0: the "
                                                  "tokenizer found none, and the model read one unknown token)")),
                "truncated": (bool, Field(description="the text had more than max_len tokens: only the first "
                                                      "max_len were read")),
                "unknown_share": (float, Field(description="share of the tokens read that are not in the model's "
                                                           "vocabulary (<unk>), 0 to 1")),
                "note": (Optional[str], Field(description=f"set when unknown_share > {MOSTLY_UNKNOWN}: the text is "
                                                          "mostly unknown to the model, or has no tokens"))}

    def notes_fields(self) -> dict[str, Any]:
        return {"truncated": (int, Field(description="texts in this request cut to max_len tokens")),
                "no_tokens": (int, Field(description="texts in which the tokenizer found no token (whitespace, "
                                                     "control characters only)")),
                "mostly_unknown": (int, Field(description=f"texts in this request with unknown_share > "
                                                          f"{MOSTLY_UNKNOWN} (each has a note)")),
                "max_len": (int, Field(description="the model's input length in tokens"))}

    def example(self) -> list[Any]:
        return ["这部电影太好看了", "worst purchase ever"]

    def limits(self) -> dict[str, int]:
        return {**super().limits(), "max_text_chars": MAX_TEXT_CHARS, "max_len": self.max_len}
