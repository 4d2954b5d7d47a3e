"""Image file bytes -> a fixed-size ``uint8 [C, H, W]`` array: the one code path that collect, batch
prediction and the service share (the ONNX graph takes these raw 0..255 values and standardises
them itself, so nothing else happens to a pixel between a file and the network).

- Formats: whatever Pillow opens here (JPEG, PNG, BMP, WebP, GIF: first frame, TIFF...).
- EXIF orientation is applied (a phone photo taken upright is upright).
- Modes: palette, RGBA/LA (composited onto white), 16-bit/float grayscale, CMYK... become RGB or L.
- Size: stretched to ``(height, width)`` with bilinear filtering, as Keras'
  ``image_dataset_from_directory`` does by default (no crop: nothing of the photo is lost).
- Refused with ``ImageDecodeError`` naming the file: zero bytes, not an image, corrupt or truncated
  data, and decompression bombs (more than ``MAX_PIXELS`` pixels, set explicitly: Pillow's own
  default only warns below twice its limit).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np

SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
MAX_PIXELS = 50_000_000  # ~7000 x 7000: above any camera's photo, far below a bomb's
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


class ImageDecodeError(ValueError):
    """An image that cannot be used; the message starts with the file's name."""


def open_image(data: bytes, name: str, draft: tuple[int, int] | None = None) -> Any:
    """Decode ``data`` (the bytes of one file) into a loaded ``PIL.Image`` with EXIF orientation applied.
    ``draft``: a JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale still at least this big (the
    decoder skips the rest: a 12-megapixel photo bound for 64x64 decodes several times faster)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise ImageDecodeError(f"{name}: empty file (0 bytes)")
    # Pillow refuses above 2x its limit and only warns between 1x and 2x; the size is checked here,
    # from the header, before any pixel is decoded (a check that also holds in threads, where
    # warnings.catch_warnings does not)
    if Image.MAX_IMAGE_PIXELS != MAX_PIXELS:  # once per process (a filter added per call resets warnings' caches)
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if width * height > MAX_PIXELS:
            raise Image.DecompressionBombError(f"{width}x{height}")
        img.seek(0)  # an animated GIF/WebP: its first frame
        if draft is not None and img.format == "JPEG":
            img.draft(img.mode, draft)
        img.load()
        turned = img.getexif().get(0x0112) in (5, 6, 7, 8)  # EXIF orientations that swap width and height
        out = ImageOps.exif_transpose(img)
        out.info["stored_size"] = (height, width) if turned else (width, height)  # as shown, before any draft
        return out
    except Image.DecompressionBombError:
        raise ImageDecodeError(f"{name}: refused, more than {MAX_PIXELS:,} pixels (a decompression bomb?)") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{name}: not an image Pillow can read ({len(data):,} bytes; "
                               f"use one of {', '.join(SUFFIXES)})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"{name}: corrupt or truncated image ({exc})") from None


def channels_of(img: Any) -> int:
    """1 for grayscale images (a palette of grays included), else 3."""
    if img.mode in GRAY_MODES:
        return 1
    if img.mode == "P":
        palette = img.getpalette() or []
        rgb = np.asarray(palette[: 3 * 256], dtype=np.int16).reshape(-1, 3)
        return 1 if len(rgb) and bool((rgb == rgb[:, :1]).all()) else 3
    return 3


def to_array(img: Any, size: tuple[int, int], channels: int) -> np.ndarray:
    """``uint8 [channels, height, width]`` of a decoded image (``channels``: 1 gray, 3 RGB)."""
    from PIL import Image

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float grayscale: scale to 0..255
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or values.max() > 255 else 255.0
        img = Image.fromarray(np.clip(values / top * 255.0, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    img = img.convert("L" if channels == 1 else "RGB")
    height, width = size
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def decode(data: bytes, name: str, size: tuple[int, int], channels: int) -> np.ndarray:
    """File bytes -> ``uint8 [C, H, W]``; ``ImageDecodeError`` naming ``name`` when unusable."""
    return decode_with_info(data, name, size, channels)[0]


def decode_with_info(data: bytes, name: str, size: tuple[int, int],
                     channels: int) -> tuple[np.ndarray, dict[str, Any]]:
    """``decode`` plus what the file held: ``{"size": "WxH" as stored, "mode", "channels"}`` (collect's
    profile). A JPEG is decoded at a reduced scale of at least twice the target both ways (EXIF may
    swap them), so the resize still antialiases."""
    side = 2 * max(size)
    img = open_image(data, name, draft=(side, side))
    width, height = img.info["stored_size"]
    info = {"size": f"{width}x{height}", "mode": img.mode, "channels": channels_of(img)}
    return to_array(img, size, channels), info


def decode_file(path: str | Path, size: tuple[int, int], channels: int) -> np.ndarray:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read ({exc.strerror})") from None
    return decode(data, str(path), size, channels)
