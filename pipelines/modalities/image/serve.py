"""The image modality's request side, chosen from the manifest's input:

- models of image *files* (input ``"image": {"size": [H, W], "channels": C}``, raw 0..255 values):
  ``ImageFileRequests`` takes ``multipart/form-data`` uploads or JSON ``{"images": [{"name": ...,
  "data": "<base64>"}]}`` and decodes every file with ``decode.decode`` -- the code collect used on
  the training files (resize, EXIF orientation, alpha, grayscale/RGB) -- then the graph standardises;
- array models (scikit-learn's 8x8 digits): ``{"images": [...]}`` of raw pixel values as nested lists.

Validation is explicit: BentoML's ndarray ``Shape`` validator reshapes instead of checking, and
pydantic's JSON parser accepts ``NaN``/``Infinity`` literals. ``check_images`` / ``check_files`` walk
the raw JSON once and stop at the first problem, so an error names one image (its file name) and its
response stays small however bad the request is; the typed fields below then document the schema (/docs).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
from typing import Annotated, Any, Optional

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from pipelines.modalities.image.decode import ImageDecodeError, decode
from pipelines.modalities.schema import MAX_BODY_BYTES, Inputs, RequestError, RequestSide, describe as _describe

__all__ = ["HEIGHT", "WIDTH", "VALUE_MIN", "VALUE_MAX", "MAX_IMAGES", "MAX_BODY_BYTES", "Images", "images_type",
           "check_images", "ImageRequests", "ImageFile", "ImageFileRequests", "check_files", "MAX_FILES",
           "MAX_FILE_BYTES", "MAX_FILES_BODY_BYTES"]

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
    standardises them itself (deploy baked the train-fitted statistics in). A manifest whose input
    has ``"image"`` (a model trained on image files) gets ``ImageFileRequests`` instead."""

    field = "images"
    max_items = MAX_IMAGES

    def __new__(cls, manifest: dict[str, Any], model_dir: Any) -> ImageRequests:
        spec = manifest.get("input")
        if cls is ImageRequests and isinstance(spec, dict) and "image" in spec:
            return super().__new__(ImageFileRequests)
        return super().__new__(cls)

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


# ---------------------------------------------------------------- image files (models with "image")

MAX_FILES = 64  # per request
MAX_FILE_BYTES = 10 * 1024 * 1024  # per file, decoded from base64 or as uploaded
MAX_FILES_BODY_BYTES = 32 * 1024 * 1024  # the whole body; base64 makes a file a third larger
MAX_NAME = 255
DATA_URL = re.compile(r"data:[\w.+/-]{0,100}(;[\w.+=-]{0,100}){0,8};base64,")  # data:image/png;base64,


class ImageFile(BaseModel):
    """One image file in a JSON request."""

    model_config = ConfigDict(extra="forbid")
    name: Optional[str] = Field(None, min_length=1, max_length=MAX_NAME,
                                description="the file's name, echoed in its prediction and in errors "
                                            "(default: images[i])", examples=["cat.jpg"])
    data: str = Field(description="the file's bytes in base64 (standard alphabet; line breaks and a "
                                  "data:image/...;base64, prefix are allowed): JPEG, PNG, BMP, WebP, GIF "
                                  "(first frame), TIFF", json_schema_extra={"contentEncoding": "base64"})


def check_files(files: Any, max_files: int = MAX_FILES) -> Any:
    """Raise on the first structural or type problem of a JSON ``images`` list; return it as is.
    Errors start with the file's name (or ``images[i]``), as decode errors do."""
    if not isinstance(files, list):
        raise _fail("images", 'expected a list of {"name": ..., "data": "<base64>"} objects', files)
    if not 1 <= len(files) <= max_files:
        raise _fail("images", f"expected 1 to {max_files} images per request, got {len(files)}")
    for i, item in enumerate(files):
        where = f"images[{i}]"
        if not isinstance(item, dict):
            raise _fail(where, 'expected an object {"name": "cat.jpg", "data": "<base64 of the file>"}', item)
        name = item.get("name")
        if name is not None and (not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME):
            raise _fail(f"{where}.name", f"expected a file name of 1 to {MAX_NAME} characters", name)
        where = name or where
        extra = [key for key in item if key not in ("name", "data")]
        if extra:
            raise _fail(where, f"unknown field {str(extra[0])[:60]!r} (an image has 'name' and 'data')")
        if not isinstance(item.get("data"), str):
            raise _fail(where, "data: expected the file's bytes as a base64 string", item.get("data"))
    return files


def _b64decode(text: str, name: str) -> bytes:
    prefix = DATA_URL.match(text) if text.startswith("data:") else None
    if prefix:
        text = text[prefix.end():]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:  # bad characters or padding; non-ASCII characters
        raise RequestError(f"{name}: data is not valid base64 ({str(exc)[:100]})") from None


class ImageFileRequests(ImageRequests):
    """Image files -- ``multipart/form-data`` uploads or JSON ``{"images": [{"name", "data"}]}`` --
    decoded by ``decode.decode`` (as collect decoded the training files) to the manifest's
    ``image.size``/``channels``, and given to the graph as float32 0..255 values; the graph
    standardises them itself. Each prediction echoes its file's ``name``."""

    max_items = MAX_FILES
    max_body_bytes = MAX_FILES_BODY_BYTES
    max_file_bytes = MAX_FILE_BYTES
    accepts_files = True
    offload = True

    def __init__(self, manifest: dict[str, Any], model_dir: Any) -> None:
        RequestSide.__init__(self, manifest, model_dir)
        spec = manifest["input"]
        image = spec.get("image") if isinstance(spec.get("image"), dict) else {}
        size, channels = image.get("size"), image.get("channels")
        if (not isinstance(size, list) or len(size) != 2 or not all(type(v) is int and v > 0 for v in size)
                or channels not in (1, 3)):
            raise ValueError(f"input.image must be {{'size': [H, W], 'channels': 1 or 3}}, got {spec.get('image')}")
        if spec.get("dtype") != "float32" or not isinstance(spec.get("shape"), list) \
                or list(spec["shape"][1:]) != [channels, *size]:
            raise ValueError(f"an image-file model takes float32 [-1, {channels}, {size[0]}, {size[1]}] (its "
                             f"input.image), the manifest's input is {spec}")
        if list(spec.get("value_range") or [0, 255]) != [0, 255]:
            raise ValueError(f"an image-file model takes raw 0..255 pixel values, the manifest says "
                             f"value_range {spec.get('value_range')}")
        self.size, self.channels = (size[0], size[1]), channels
        self._example = self._example_png()

    def check(self, session: Any) -> None:
        super().check(session)
        dims = session.get_inputs()[0].shape[1:]
        want = [self.channels, *self.size]
        if len(dims) != 3 or any(isinstance(d, int) and d != w for d, w in zip(dims, want)):
            raise ValueError(f"graph input shape {session.get_inputs()[0].shape} does not match the manifest's "
                             f"[-1, {want[0]}, {want[1]}, {want[2]}]")

    def items_type(self) -> Any:
        return Annotated[
            list[ImageFile],
            BeforeValidator(lambda value: check_files(value, self.max_items)),
            Field(min_length=1, max_length=self.max_items,
                  description=f"1 to {self.max_items} image files of at most {self.max_file_bytes:,} bytes each; "
                              f"each is decoded, EXIF-rotated and resized to {self.size[0]}x{self.size[1]} "
                              f"{'RGB' if self.channels == 3 else 'grayscale'} as the training images were "
                              "(or send them as multipart/form-data file parts)",
                  examples=[self.example()[:1]]),
        ]

    def from_files(self, files: list[tuple[str, bytes]]) -> Any:
        if not 1 <= len(files) <= self.max_items:
            raise RequestError(f"expected 1 to {self.max_items} image files per request, got {len(files)} "
                               "(curl -F file=@cat.jpg -F file=@dog.png ...)")
        for name, data in files:
            self._check_size(name, data)
        return files

    def _check_size(self, name: str, data: bytes) -> None:
        if len(data) > self.max_file_bytes:
            raise RequestError(f"{name}: {len(data):,} bytes, over the limit of {self.max_file_bytes:,} bytes per file")

    def to_inputs(self, items: Any) -> Inputs:
        """Decode every file (the first that cannot be used: ``RequestError`` naming it)."""
        names, arrays = [], []
        for i, item in enumerate(items):
            if isinstance(item, ImageFile):
                name = item.name or f"images[{i}]"
                data = _b64decode(item.data, name)
            else:
                name, data = item
            self._check_size(name, data)
            try:
                arrays.append(decode(data, name, self.size, self.channels))
            except ImageDecodeError as exc:
                raise RequestError(str(exc)) from None
            except Exception as exc:  # noqa: BLE001 - Pillow raises many types on hostile files: a 400, not a 500
                raise RequestError(f"{name}: cannot decode it ({type(exc).__name__}: {str(exc)[:100]})") from None
            names.append(name)
        batch = np.stack(arrays).astype(np.float32)
        return Inputs({self.input_name: batch}, extras=[{"name": name} for name in names])

    def extra_fields(self) -> dict[str, Any]:
        return {"name": (str, Field(description="the image's file name: the upload's filename, the JSON item's "
                                                "name, or images[i]"))}

    def example(self) -> list[Any]:
        return [{"name": "example-1.png", "data": self._example}, {"name": "example-2.png", "data": self._example}]

    def _example_png(self) -> str:
        """A mid-gray PNG of the model's size, base64 (the warm-up request and the /docs example)."""
        from PIL import Image

        out = io.BytesIO()
        Image.new("L" if self.channels == 1 else "RGB", (self.size[1], self.size[0]),
                  128 if self.channels == 1 else (128, 128, 128)).save(out, format="PNG")
        return base64.b64encode(out.getvalue()).decode("ascii")

    def limits(self) -> dict[str, int]:
        return {**super().limits(), "max_file_bytes": self.max_file_bytes}
