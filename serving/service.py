"""BentoML 1.4 service over the deployed ONNX digits classifier.

Two services, as BentoML composes them: ``DigitsClassifier`` is the public HTTP API (strict request
validation, body-size limit, /predict, GET /metadata) and calls ``DigitsModel``, which owns the ONNX
Runtime session and adaptively batches ``infer`` calls across concurrent requests. A batchable API
takes a batch array, so validation has to happen in front of it; ``bentoml serve`` runs the model
service in its own process behind a private Unix socket.

    bentoml serve serving.service:DigitsClassifier      # 127.0.0.1:3000, model from artifacts/deploy
"""

from __future__ import annotations

import os
from typing import Any

import bentoml
import numpy as np
from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from serving.common import RUNNER_CONNECTION, ModelClient, install_log_filter
from serving.limits import BodySizeLimitMiddleware
from serving.model import LoadedModel, ModelLoadError, load_model
from pipelines.modalities.image.serve import (HEIGHT, MAX_BODY_BYTES, MAX_IMAGES, VALUE_MAX, VALUE_MIN, WIDTH, Images,
                             ModelMetadata, Prediction, PredictResponse)

# Adaptive batching, chosen by measurement (benchmarks/serve_bench.py: 2 cores, 16 clients, 8 s,
# one image per request). The dispatcher drops queued requests with 503 once their estimated wait
# passes max_latency_ms, so it is a load-shedding deadline, not a wait target (the batching wait
# adapts to the load and stays a few ms). 503 share / req/s: 10 ms 83 % / 33; 50 ms 0.3 % / 228;
# 100 ms 0.5 % / 229; 250 ms 0 % / 225; 1000 ms 0 % / 179, ~4 requests per batch. 250 ms sheds
# nothing at ordinary load yet still sheds a real backlog well inside the 30 s timeout.
# max_batch_size counts images: requests are combined up to 512 images (two full requests).
MAX_LATENCY_MS = int(os.environ.get("DLOPS_BATCH_MAX_LATENCY_MS", "250"))
MAX_BATCH_SIZE = int(os.environ.get("DLOPS_BATCH_MAX_SIZE", "512"))
EXPECTED_INPUT_SHAPE = [-1, 1, HEIGHT, WIDTH]


install_log_filter()


def _check_contract(manifest: dict[str, Any]) -> None:
    """This API speaks 8x8 images in [0, 16]: refuse to start on a model that takes anything else."""
    from serving.model import service_for

    if manifest.get("kind") in ("tabular", "text"):
        raise ModelLoadError(f"this is a {manifest['kind']} model: serve {service_for(manifest)}")
    spec = manifest["input"]
    if spec.get("shape") != EXPECTED_INPUT_SHAPE:
        raise ModelLoadError(f"manifest input.shape {spec.get('shape')} != {EXPECTED_INPUT_SHAPE}")
    if spec.get("value_range", [VALUE_MIN, VALUE_MAX]) != [VALUE_MIN, VALUE_MAX]:
        raise ModelLoadError(f"manifest input.value_range {spec['value_range']} != {[VALUE_MIN, VALUE_MAX]}")


# runner_connection: see serving/common.py (bentoml/BentoML#5540).
@bentoml.service(name="dlops-digits-model", workers=1, traffic={"timeout": 30},
                 runner_connection=RUNNER_CONNECTION)
class DigitsModel:
    """ONNX Runtime over the model named by DLOPS_MODEL_URI / DLOPS_MODEL_DIR / artifacts/deploy."""

    def __init__(self) -> None:
        self.model: LoadedModel = load_model()
        _check_contract(self.model.manifest)
        self.model.predict_proba(np.zeros((2, 1, HEIGHT, WIDTH), np.float32))  # warm-up

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def infer(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities, float32 [n, classes], for float32 images [n, 1, 8, 8]."""
        if images.ndim != 4 or list(images.shape[1:]) != EXPECTED_INPUT_SHAPE[1:]:
            raise bentoml.exceptions.InvalidArgument(f"expected [n, 1, 8, 8] images, got {list(images.shape)}")
        return self.model.predict_proba(np.ascontiguousarray(images, dtype=np.float32))

    @bentoml.api
    def manifest(self) -> dict[str, Any]:
        """The served model's manifest plus where it was loaded from: one source of truth for the API
        process (in registry mode a second download could resolve the alias to another version)."""
        return {**self.model.manifest, "source": self.model.source}


web = FastAPI(title="dlops digits", docs_url=None, redoc_url=None, openapi_url=None)


@bentoml.service(
    name="dlops-digits",
    workers=1,
    # loopback by default (BentoML binds 0.0.0.0); `bentoml serve --host 0.0.0.0` or a container opens it up
    http={"host": "127.0.0.1", "port": 3000},
    traffic={"timeout": 30},
)
@bentoml.asgi_app(web, path="/")
class DigitsClassifier(ModelClient):
    """Handwritten-digit classifier (scikit-learn digits, 8x8 images, raw pixel values 0..16)."""

    model = bentoml.depends(DigitsModel)

    @bentoml.api(route="/predict")
    async def predict(self, images: Images) -> PredictResponse:
        """Classify 1 to 256 images of 8x8 raw pixel values in [0, 16]."""
        manifest = await self._get_manifest()
        batch = np.asarray(images, dtype=np.float32).reshape(-1, 1, HEIGHT, WIDTH)
        probs = np.asarray(await self.call_model("infer", batch))
        classes = manifest["classes"]
        best = probs.argmax(axis=1)
        predictions = [
            Prediction(label=classes[k], class_index=int(k), probability=float(p[k]), probabilities=p.tolist())
            for k, p in zip(best, probs)
        ]
        return PredictResponse(model_name=manifest["model_name"], model_version=manifest["version"],
                               model_alias=manifest["alias"], classes=classes, predictions=predictions)

    @web.get("/metadata", response_model=ModelMetadata, tags=["Service APIs"])
    async def metadata(self) -> ModelMetadata:
        """Identity, metrics, lineage and input schema of the served model (from its manifest)."""
        m = await self._get_manifest()
        return ModelMetadata(
            model_name=m["model_name"], version=m["version"], alias=m["alias"],
            alias_reason=m.get("alias_reason"), task=m.get("task"), classes=m["classes"],
            metrics=m["metrics"],
            lineage={k: m.get(k) for k in ("run_id", "data_hash", "git_sha", "onnx_sha256")},
            input=m["input"], output=m["output"], bento_tag=m.get("bento_tag"),
            created_at=m.get("created_at"), source=m["source"],
            limits={"max_images": MAX_IMAGES, "max_body_bytes": MAX_BODY_BYTES},
        )

    @web.get("/docs", include_in_schema=False)
    async def docs(self) -> RedirectResponse:
        """Swagger UI lives at / in BentoML; /docs is where people look for it."""
        return RedirectResponse("/")


DigitsClassifier.add_asgi_middleware(BodySizeLimitMiddleware, max_bytes=MAX_BODY_BYTES)
