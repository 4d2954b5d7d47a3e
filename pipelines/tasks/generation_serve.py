"""The request side of a generation model: ``POST /generate`` with ``{"samples": [{"label": "3", "seed": 7}]}``.

Each item asks for one image: ``label`` (a class of a conditional model; omitted: classes in turn) and
``seed`` (the noise is ``numpy.random.default_rng(seed).standard_normal(noise_dim)``, so a seed always
gives the same image; omitted: a fresh random seed, returned with the image). numpy + Pillow only.
"""

from __future__ import annotations

import base64
import io
import secrets
from typing import Any, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, conlist

from pipelines.modalities.schema import Inputs, RequestError, RequestSide

MAX_SAMPLES = 64
MAX_SEED = 2**63 - 1


def png_base64(image: np.ndarray, lo: float, hi: float) -> str:
    """A ``[C, H, W]`` image in ``[lo, hi]`` as a base64 PNG (gray for one channel, RGB for three)."""
    from PIL import Image

    pixels = np.round((np.asarray(image, np.float64) - lo) / max(hi - lo, 1e-12) * 255).clip(0, 255).astype(np.uint8)
    picture = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class SampleRequests(RequestSide):
    field = "samples"
    max_items = MAX_SAMPLES

    def __init__(self, manifest: dict[str, Any], model_dir: Any) -> None:
        self.manifest = manifest
        spec = manifest["input"]
        self.noise_name, self.noise_dim = spec["noise"]["name"], int(spec["noise"]["dim"])
        self.label_name = spec["label"]["name"]
        self.classes: list[str] | None = spec["label"]["classes"]
        self.index = {c: i for i, c in enumerate(self.classes or [])}

    def items_type(self) -> Any:
        classes = self.classes
        described = f"one of {classes}" if classes else "not used: this model is unconditional"

        class Sample(BaseModel):
            model_config = ConfigDict(extra="forbid")
            label: Optional[str] = Field(None, description=f"the class to draw ({described}); omitted: classes "
                                                           "in turn")
            seed: Optional[int] = Field(None, ge=0, le=MAX_SEED, description="noise seed (the same seed gives the "
                                                                              "same image); omitted: random")

        return conlist(Sample, min_length=1, max_length=MAX_SAMPLES)

    def check(self, session: Any) -> None:
        inputs = [i.name for i in session.get_inputs()]
        if inputs != [self.noise_name, self.label_name]:
            raise ValueError(f"graph inputs {inputs} do not match the manifest's {[self.noise_name, self.label_name]}")

    def to_inputs(self, items: Any) -> Inputs:
        noise = np.empty((len(items), self.noise_dim), np.float32)
        labels = np.zeros(len(items), np.int64)
        extras = []
        for i, item in enumerate(items):
            seed = item.seed if item.seed is not None else secrets.randbelow(MAX_SEED)
            noise[i] = np.random.default_rng(seed).standard_normal(self.noise_dim)
            if item.label is not None:
                if not self.classes:
                    raise RequestError(f"samples[{i}].label: this model is unconditional (send no label)")
                if item.label not in self.index:
                    raise RequestError(f"samples[{i}].label: {item.label[:40]!r} is not one of {self.classes}")
                labels[i] = self.index[item.label]
            elif self.classes:
                labels[i] = i % len(self.classes)
            extras.append({"label": self.classes[labels[i]] if self.classes else None, "seed": seed})
        return Inputs({self.noise_name: noise, self.label_name: labels}, extras)

    def extra_fields(self) -> dict[str, Any]:
        return {"label": (Optional[str], Field(description="the class drawn (null: unconditional model)")),
                "seed": (int, Field(description="the noise seed of this image"))}

    def example(self) -> list[Any]:
        first = self.classes[0] if self.classes else None
        return [{"label": first, "seed": 0}, {"seed": 1}]
