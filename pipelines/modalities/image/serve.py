"""The image modality's request side: ``{"images": [...]}`` of raw pixel values, validated, to graph inputs.

Validation is explicit: BentoML's ndarray ``Shape`` validator reshapes instead of checking, and
pydantic's JSON parser accepts ``NaN``/``Infinity`` literals. ``check_images`` walks the raw JSON
once and stops at the first problem, so an error names one image/row/column and its response stays
small however bad the request is; the typed fields below then document the schema (/docs).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import numpy as np
from pydantic import BeforeValidator, Field
from pydantic_core import PydanticCustomError

from pipelines.modalities.schema import MAX_BODY_BYTES, Inputs, RequestSide, describe as _describe

__all__ = ["HEIGHT", "WIDTH", "VALUE_MIN", "VALUE_MAX", "MAX_IMAGES", "MAX_BODY_BYTES", "Images", "images_type",
           "check_images", "ImageRequests"]

HEIGHT, WIDTH = 8, 8
VALUE_MIN, VALUE_MAX = 0.0, 16.0  # raw pixel range of sklearn's digits (the manifest's value_range)
MAX_IMAGES = 256  # per request; ~100 KB of JSON, far below the body limit


_UNSET = object()


def _fail(where: str, problem: str, value: Any = _UNSET) -> PydanticCustomError:
    shown = "" if value is _UNSET else f", got {_describe(value)}"
    return PydanticCustomError("invalid_images", "{where}: {problem}{shown}",
                               {"where": where, "problem": problem, "shown": shown})


def check_images(images: Any, height: int = HEIGHT, width: int = WIDTH, lo: float = VALUE_MIN,
                 hi: float = VALUE_MAX) -> Any:
    """Raise on the first structural, type, finiteness or range problem; return the input as is."""
    if not isinstance(images, list):
        raise _fail("images", f"expected a list of {height}x{width} images", images)
    if not 1 <= len(images) <= MAX_IMAGES:
        raise _fail("images", f"expected 1 to {MAX_IMAGES} images per request, got {len(images)}")
    for i, image in enumerate(images):
        if not isinstance(image, list) or len(image) != height:
            raise _fail(f"images[{i}]", f"expected {height} rows of {width} pixel values", image)
        for r, row in enumerate(image):
            if not isinstance(row, list) or len(row) != width:
                hint = f" (a bare {height}x{width} image? wrap it in a list: {{\"images\": [image]}})" if (
                    i == 0 and r == 0 and not isinstance(row, list)) else ""
                raise _fail(f"images[{i}] row {r}", f"expected a list of {width} numbers{hint}", row)
            for c, value in enumerate(row):
                # type() not isinstance(): bool is an int subclass and must not pass as a pixel
                if type(value) not in (int, float):
                    raise _fail(f"images[{i}] row {r} column {c}", "expected a number", value)
                # an int compares exactly however many digits it has (math.isfinite would overflow)
                if type(value) is float and not math.isfinite(value):
                    raise _fail(f"images[{i}] row {r} column {c}", "expected a finite number", value)
                if not lo <= value <= hi:
                    raise _fail(f"images[{i}] row {r} column {c}", f"value out of range [{lo:g}, {hi:g}]", value)
    return images


def images_type(height: int = HEIGHT, width: int = WIDTH, lo: float = VALUE_MIN, hi: float = VALUE_MAX) -> Any:
    """The ``images`` request type for single-channel ``height`` x ``width`` images in ``[lo, hi]``."""
    pixel = Annotated[float, Field(ge=lo, le=hi, allow_inf_nan=False, strict=True)]
    row = Annotated[list[pixel], Field(min_length=width, max_length=width)]
    one = Annotated[list[row], Field(min_length=height, max_length=height)]
    return Annotated[
        list[one],
        BeforeValidator(lambda value: check_images(value, height, width, lo, hi)),
        Field(min_length=1, max_length=MAX_IMAGES,
              description=f"1 to {MAX_IMAGES} images, each {height} rows of {width} raw pixel values in "
                          f"[{lo:g}, {hi:g}] (no client-side scaling)",
              examples=[[DIGIT_ZERO] if (height, width) == (HEIGHT, WIDTH) else [[[lo] * width] * height]]),
    ]


DIGIT_ZERO = [[0, 0, 5, 13, 9, 1, 0, 0], [0, 0, 13, 15, 10, 15, 5, 0], [0, 3, 15, 2, 0, 11, 8, 0],
              [0, 4, 12, 0, 0, 8, 8, 0], [0, 5, 8, 0, 0, 9, 8, 0], [0, 4, 11, 0, 1, 12, 7, 0],
              [0, 2, 14, 5, 10, 12, 0, 0], [0, 0, 6, 13, 10, 0, 0, 0]]
Images = images_type()


class ImageRequests(RequestSide):
    """``{"images": [...]}``: single-channel images as nested lists of raw pixel values; the graph
    standardises them itself (deploy baked the train-fitted statistics in)."""

    field = "images"
    max_items = MAX_IMAGES

    def __init__(self, manifest: dict[str, Any], model_dir: Any) -> None:
        super().__init__(manifest, model_dir)
        spec = manifest["input"]
        shape, value_range = spec.get("shape"), spec.get("value_range") or [VALUE_MIN, VALUE_MAX]
        if spec.get("dtype") != "float32" or not isinstance(shape, list) or len(shape) != 4 or shape[1] != 1:
            raise ValueError(f"this service takes float32 single-channel images [-1, 1, H, W], the manifest's "
                             f"input is {spec}")
        self.height, self.width = shape[2], shape[3]
        self.lo, self.hi = float(value_range[0]), float(value_range[1])

    def items_type(self) -> Any:
        return images_type(self.height, self.width, self.lo, self.hi)

    def to_inputs(self, items: Any) -> Inputs:
        batch = np.asarray(items, dtype=np.float32).reshape(-1, 1, self.height, self.width)
        return Inputs({self.input_name: batch})

    def example(self) -> list[Any]:
        return [[[self.lo] * self.width] * self.height] * 2
