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
    classes: Optional[list[str]] = None
    metrics: dict[str, Any]
    lineage: dict[str, Optional[str]]
    input: dict[str, Any]
    output: dict[str, Any]
    bento_tag: Optional[str] = None
    created_at: Optional[str] = None
    source: str
    limits: dict[str, int]


class RequestError(ValueError):
    """A request the model cannot take (answered 400 with this message)."""


class Inputs:
    """What a request side makes of validated items: the graph inputs, one dict of extra fields per
    item (merged into its prediction), and notes about the whole request (in the response)."""

    __slots__ = ("feeds", "extras", "notes")

    def __init__(self, feeds: dict[str, Any], extras: list[dict[str, Any]] | None = None,
                 notes: dict[str, Any] | None = None) -> None:
        self.feeds, self.extras, self.notes = feeds, extras, notes or {}


class RequestSide:
    """A modality's side of the service: the JSON body's one field, the validated type of its items,
    and the one raw-request -> graph-input function (the same code training used, or the graph
    itself holds the preprocessing). Built once per service from the deployed manifest."""

    field: str = ""
    max_items: int = 1
    max_body_bytes: int = MAX_BODY_BYTES
    accepts_files: bool = False  # True: multipart/form-data file uploads too (``from_files``)
    offload: bool = False  # True: ``to_inputs`` decodes files (ms to s each), so always off the event loop

    def __init__(self, manifest: dict[str, Any], model_dir: Any) -> None:
        self.manifest = manifest
        self.input_name = manifest["input"].get("name", "input")

    def items_type(self) -> Any:
        """The type of ``body[field]`` (pydantic): validation and the /docs schema."""
        raise NotImplementedError

    def check(self, session: Any) -> None:
        """Refuse (``ValueError``) a graph whose inputs do not match the manifest's contract."""
        inputs = [i.name for i in session.get_inputs()]
        if inputs != [self.input_name]:
            raise ValueError(f"graph inputs {inputs} do not match the manifest's input {self.input_name!r}")

    def to_inputs(self, items: Any) -> Inputs:
        raise NotImplementedError

    def from_files(self, files: list[tuple[str, bytes]]) -> Any:
        """Items for ``to_inputs`` from uploaded ``(file name, bytes)`` (sides that accept files);
        ``RequestError`` naming the file at fault."""
        raise NotImplementedError

    def extra_fields(self) -> dict[str, Any]:
        """Per-prediction fields this side adds: name -> (type, pydantic Field)."""
        return {}

    def notes_fields(self) -> dict[str, Any]:
        """Request-level notes: name -> (type, pydantic Field)."""
        return {}

    def example(self) -> list[Any]:
        """Two valid items (a warm-up request, and the /docs example)."""
        raise NotImplementedError

    def limits(self) -> dict[str, int]:
        return {f"max_{self.field}": self.max_items, "max_body_bytes": self.max_body_bytes}
