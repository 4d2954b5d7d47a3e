"""Request/response schemas of the text service, and the padding-column trim its batched model call uses.

As in serving/schemas.py, ``check_texts`` walks the raw JSON first and stops at the first problem, so
an error names one text by its index and the response stays small however bad the request is; the
typed field then documents the schema (/docs.json). A text longer than the model's ``max_len`` tokens
is not an error: it is truncated (as in training) and the response says so.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

import numpy as np
from pydantic import BaseModel, BeforeValidator, Field, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from pipelines.modalities.schema import ModelMetadata, describe as _describe

MAX_TEXTS = 128  # per request
MAX_TEXT_CHARS = 10_000  # per text: far past any max_len in tokens, and it bounds tokenizer work
# 128 texts of 10,000 characters of UTF-8 (3 bytes a CJK character) fit; ASCII-escaped JSON (\uXXXX,
# 6 bytes a character, Python's json.dumps default) fits 64 of them
MAX_BODY_BYTES = 4 * 1024 * 1024
PAD_ID = 0
MIN_WIDTH = 2  # columns kept by trim_padding (see there)

__all__ = ["MAX_BODY_BYTES", "MAX_TEXTS", "MAX_TEXT_CHARS", "Texts", "check_texts", "no_tokens_error",
           "trim_padding", "TextPrediction", "TextNotes", "TextPredictResponse", "TextMetadata"]


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
        if not text.strip():
            raise _fail(f"texts[{i}]", "empty or whitespace-only text")
        if len(text) > MAX_TEXT_CHARS:
            raise _fail(f"texts[{i}]", f"text too long: {len(text)} characters, the limit is {MAX_TEXT_CHARS}")
    return texts


def no_tokens_error(index: int) -> ValidationError:
    """A 400 for a text the tokenizer reduces to nothing (e.g. only control characters): raised from the
    API method after encoding, as a ValidationError so it is answered and logged like the others."""
    error = _fail(f"texts[{index}]", "no tokens after tokenization (only characters the tokenizer drops)")
    return ValidationError.from_exception_data(
        "texts", [InitErrorDetails(type=error, loc=("texts", index), input="...")])


Texts = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]],
    BeforeValidator(check_texts),
    Field(min_length=1, max_length=MAX_TEXTS,
          description=f"1 to {MAX_TEXTS} texts (any language the tokenizer was fitted on), each 1 to "
                      f"{MAX_TEXT_CHARS} characters and not only whitespace; texts over the model's max_len "
                      "tokens are truncated (see /metadata) and flagged in the response",
          examples=[["这部电影太好看了", "worst purchase ever"]]),
]


def trim_padding(ids: np.ndarray) -> np.ndarray:
    """Drop the trailing columns that are padding in every row. Every request is padded to max_len so
    BentoML can concatenate them; the model's output does not depend on trailing padding, so a batch of
    short texts runs on a short tensor. At least 2 columns stay: torch.export traces a dynamic axis as
    >= 2 and deploy's parity check runs widths >= 2 only, so a width of 1 is never trusted."""
    used = np.flatnonzero((ids != PAD_ID).any(axis=0))
    width = max(int(used[-1]) + 1 if used.size else 0, MIN_WIDTH)
    return np.ascontiguousarray(ids[:, :width])


class TextPrediction(BaseModel):
    label: str = Field(description="the predicted class")
    probability: float = Field(description="probability of `label`")
    probabilities: list[float] = Field(description="one per class, in the order of `classes`")
    tokens: int = Field(description="tokens the model read (at most max_len)")
    truncated: bool = Field(description="the text had more than max_len tokens: only the first max_len were read")


class TextNotes(BaseModel):
    truncated: int = Field(description="texts in this request cut to max_len tokens")
    max_len: int = Field(description="the model's input length in tokens")


class TextPredictResponse(BaseModel):
    model_name: str
    model_version: Optional[str]
    model_alias: Optional[str]
    classes: list[str]
    decision_threshold: Optional[float] = Field(description="binary: `label` is classes[1] iff its probability "
                                                            ">= this; null: the most probable class")
    predictions: list[TextPrediction]
    notes: TextNotes


class TextMetadata(ModelMetadata):
    """What /metadata returns: identity, quality, lineage and input contract of the served model."""

    kind: str
    task: str
    decision_threshold: Optional[float]
