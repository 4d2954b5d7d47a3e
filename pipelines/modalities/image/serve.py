"""Request/response schemas of the image (8x8 digits) service.

Validation is explicit: BentoML's ndarray ``Shape`` validator reshapes instead of checking, and
pydantic's JSON parser accepts ``NaN``/``Infinity`` literals. ``check_images`` walks the raw JSON
once and stops at the first problem, so an error names one image/row/column and its response stays
small however bad the request is; the typed fields below then document the schema (/docs).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Optional

from pydantic import BaseModel, BeforeValidator, Field
from pydantic_core import PydanticCustomError

from pipelines.modalities.schema import MAX_BODY_BYTES, ModelMetadata, describe as _describe

__all__ = ["HEIGHT", "WIDTH", "VALUE_MIN", "VALUE_MAX", "MAX_IMAGES", "MAX_BODY_BYTES", "Images", "check_images",
           "Prediction", "PredictResponse", "ModelMetadata"]

HEIGHT, WIDTH = 8, 8
VALUE_MIN, VALUE_MAX = 0.0, 16.0  # raw pixel range of sklearn's digits (the manifest's value_range)
MAX_IMAGES = 256  # per request; ~100 KB of JSON, far below the body limit


_UNSET = object()


def _fail(where: str, problem: str, value: Any = _UNSET) -> PydanticCustomError:
    shown = "" if value is _UNSET else f", got {_describe(value)}"
    return PydanticCustomError("invalid_images", "{where}: {problem}{shown}",
                               {"where": where, "problem": problem, "shown": shown})


def check_images(images: Any) -> Any:
    """Raise on the first structural, type, finiteness or range problem; return the input as is."""
    if not isinstance(images, list):
        raise _fail("images", f"expected a list of {HEIGHT}x{WIDTH} images", images)
    if not 1 <= len(images) <= MAX_IMAGES:
        raise _fail("images", f"expected 1 to {MAX_IMAGES} images per request, got {len(images)}")
    for i, image in enumerate(images):
        if not isinstance(image, list) or len(image) != HEIGHT:
            raise _fail(f"images[{i}]", f"expected {HEIGHT} rows of {WIDTH} pixel values", image)
        for r, row in enumerate(image):
            if not isinstance(row, list) or len(row) != WIDTH:
                hint = " (a bare 8x8 image? wrap it in a list: {\"images\": [image]})" if (
                    i == 0 and r == 0 and not isinstance(row, list)) else ""
                raise _fail(f"images[{i}] row {r}", f"expected a list of {WIDTH} numbers{hint}", row)
            for c, value in enumerate(row):
                # type() not isinstance(): bool is an int subclass and must not pass as a pixel
                if type(value) not in (int, float):
                    raise _fail(f"images[{i}] row {r} column {c}", "expected a number", value)
                if not math.isfinite(value):
                    raise _fail(f"images[{i}] row {r} column {c}", "expected a finite number", value)
                if not VALUE_MIN <= value <= VALUE_MAX:
                    raise _fail(f"images[{i}] row {r} column {c}",
                                f"value out of range [{VALUE_MIN:g}, {VALUE_MAX:g}]", value)
    return images


Pixel = Annotated[float, Field(ge=VALUE_MIN, le=VALUE_MAX, allow_inf_nan=False, strict=True)]
Row = Annotated[list[Pixel], Field(min_length=WIDTH, max_length=WIDTH)]
Image = Annotated[list[Row], Field(min_length=HEIGHT, max_length=HEIGHT)]
Images = Annotated[
    list[Image],
    BeforeValidator(check_images),
    Field(min_length=1, max_length=MAX_IMAGES,
          description=f"1 to {MAX_IMAGES} images, each {HEIGHT} rows of {WIDTH} raw pixel values in "
                      f"[{VALUE_MIN:g}, {VALUE_MAX:g}] (scikit-learn digits; no client-side scaling)",
          examples=[[[[0, 0, 5, 13, 9, 1, 0, 0], [0, 0, 13, 15, 10, 15, 5, 0], [0, 3, 15, 2, 0, 11, 8, 0],
                      [0, 4, 12, 0, 0, 8, 8, 0], [0, 5, 8, 0, 0, 9, 8, 0], [0, 4, 11, 0, 1, 12, 7, 0],
                      [0, 2, 14, 5, 10, 12, 0, 0], [0, 0, 6, 13, 10, 0, 0, 0]]]]),
]


class Prediction(BaseModel):
    label: str = Field(description="the most probable class")
    class_index: int
    probability: float = Field(description="probability of `label`")
    probabilities: list[float] = Field(description="one per class, in the order of `classes`")


class PredictResponse(BaseModel):
    model_name: str
    model_version: Optional[str]
    model_alias: Optional[str]
    classes: list[str]
    predictions: list[Prediction]
