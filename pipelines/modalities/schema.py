"""What every modality's request side shares: the default body limit, how a bad value is described
in an error, and the /metadata response (identity, quality and lineage of the served model)."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel

MAX_BODY_BYTES = 2 * 1024 * 1024  # 2 MiB: 256 pretty-printed images fit; anything bigger is refused unread


def describe(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return f"{type(value).__name__} of length {len(value)}"
    if value is None:
        return "null"
    return f"{type(value).__name__} {repr(value)[:40]}"


class ModelMetadata(BaseModel):
    """What /metadata returns: identity, quality and lineage of the served model, from its manifest.
    The tabular and text services extend it with their own fields."""

    model_name: str
    version: Optional[str]
    alias: Optional[str]
    alias_reason: Optional[str] = None
    task: Optional[str] = None
    classes: list[str]
    metrics: dict[str, Any]
    lineage: dict[str, Optional[str]]
    input: dict[str, Any]
    output: dict[str, Any]
    bento_tag: Optional[str] = None
    created_at: Optional[str] = None
    source: str
    limits: dict[str, int]
