"""BentoML 1.4 service over a deployed ONNX text classifier: JSON texts in, labels + class probabilities out.

The same architecture as serving/service.py: ``TextClassifier`` is the public HTTP API (strict
request validation, body-size limit, /predict, GET /metadata) and calls ``TextModel``, which owns the
ONNX Runtime session and adaptively batches ``infer`` calls. The API tokenizes with
serving/text_encode.encode, the code the training split uses, and the tokenizer it loads comes from
the model service, so text and model always belong together (in registry mode each process would
otherwise download for itself, and an alias can move in between).

Every request is padded to the model's max_len, so BentoML can concatenate requests of any length
into one batch; ``infer`` then cuts the columns that are padding in every row before running ONNX
Runtime (the model's output does not depend on trailing padding).

    bentoml serve serving.text:TextClassifier      # 127.0.0.1:3000, model from artifacts/deploy
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from serving.common import RUNNER_CONNECTION, ModelClient, install_log_filter
from serving.limits import BodySizeLimitMiddleware
from serving.model import LoadedModel, ModelLoadError, is_text, load_model, service_for
from pipelines.modalities.tabular.serve import decide
from pipelines.modalities.text.serve import (MAX_BODY_BYTES, MAX_TEXT_CHARS, MAX_TEXTS, TextMetadata, TextNotes,
                                  TextPrediction, TextPredictResponse, Texts, no_tokens_error, trim_padding)

# Batching as in serving/service.py (max_latency_ms is a load-shedding deadline, not a wait); a batch
# holds up to two full requests. Rows are texts, each max_len ids wide before the trim.
MAX_LATENCY_MS = int(os.environ.get("DLOPS_BATCH_MAX_LATENCY_MS", "250"))
MAX_BATCH_SIZE = int(os.environ.get("DLOPS_BATCH_MAX_SIZE", str(2 * MAX_TEXTS)))

install_log_filter()

truncated_texts = bentoml.metrics.Counter(
    name="dlops_text_truncated_texts",
    documentation="Texts longer than the model's max_len tokens, cut to max_len before inference",
)


# runner_connection: see serving/common.py (bentoml/BentoML#5540).
@bentoml.service(name="dlops-text-model", workers=1, traffic={"timeout": 30},
                 runner_connection=RUNNER_CONNECTION)
class TextModel:
    """ONNX Runtime over the text model named by DLOPS_MODEL_URI / DLOPS_MODEL_DIR / artifacts/deploy."""

    def __init__(self) -> None:
        self.model: LoadedModel = load_model()
        if not is_text(self.model.manifest) or self.model.tokenizer_path is None:
            raise ModelLoadError(f"{self.model.source}: not a text model (kind {self.model.manifest.get('kind')!r}); "
                                 f"serve {service_for(self.model.manifest)}")
        from pipelines.modalities.text.encode import load_tokenizer

        try:  # refuse to start on a tokenizer the API process could not use (<pad> must be 0, <unk> 1)
            load_tokenizer(self.model.tokenizer_path)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None
        self.model.predict_proba(np.ones((2, 2), np.int64))  # warm-up

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def infer(self, ids: np.ndarray) -> np.ndarray:
        """Class probabilities, float32 [n, classes], for int64 token ids [n, seq] padded with 0 at the end."""
        if ids.ndim != 2 or ids.shape[1] < 1 or not np.issubdtype(ids.dtype, np.integer):
            raise bentoml.exceptions.InvalidArgument(f"expected int64 ids [n, seq], got {ids.dtype} {list(ids.shape)}")
        return self.model.predict_proba(trim_padding(ids.astype(np.int64, copy=False)))

    @bentoml.api
    def manifest(self) -> dict[str, Any]:
        """The served model's manifest plus where it was loaded from (one source of truth)."""
        return {**self.model.manifest, "source": self.model.source}

    @bentoml.api
    def tokenizer_json(self) -> str:
        """The served model's tokenizer.json (checked against the manifest's sha256 at load)."""
        return self.model.tokenizer_path.read_text(encoding="utf-8")


def _load_tokenizer(text: str) -> Any:
    """text_encode.load_tokenizer takes a path: the training split's loader, not a look-alike."""
    from pipelines.modalities.text.encode import load_tokenizer

    with tempfile.TemporaryDirectory(prefix="dlops-tokenizer-") as tmp:
        path = Path(tmp) / "tokenizer.json"
        path.write_text(text, encoding="utf-8")
        return load_tokenizer(path)


web = FastAPI(title="dlops text", docs_url=None, redoc_url=None, openapi_url=None)


@bentoml.service(
    name="dlops-text",
    workers=1,
    # loopback by default (BentoML binds 0.0.0.0); `bentoml serve --host 0.0.0.0` or a container opens it up
    http={"host": "127.0.0.1", "port": 3000},
    traffic={"timeout": 30},
)
@bentoml.asgi_app(web, path="/")
class TextClassifier(ModelClient):
    """Text classifier: raw texts in (tokenized here, with the model's own tokenizer), classes out."""

    model = bentoml.depends(TextModel)

    def __init__(self) -> None:
        super().__init__()
        self._tokenizer: Any = None

    async def _get_manifest(self) -> dict[str, Any]:
        manifest = await super()._get_manifest()
        if self._tokenizer is None:
            async with self._lock:
                if self._tokenizer is None:
                    self._tokenizer = _load_tokenizer(await self.model.to_async.tokenizer_json())
        return manifest

    async def _encode(self, texts: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from pipelines.modalities.text.encode import encode

        # off the event loop: 128 texts of 10,000 characters take a while; encode only reads the tokenizer
        return await asyncio.to_thread(encode, self._tokenizer, texts, max_len)

    @bentoml.api(route="/predict")
    async def predict(self, texts: Texts) -> TextPredictResponse:
        """Classify 1 to 128 texts; each is tokenized and cut to the model's max_len tokens (flagged)."""
        manifest = await self._get_manifest()
        max_len = manifest["input"]["max_len"]
        ids, lengths, truncated = await self._encode(texts, max_len)
        empty = np.flatnonzero(lengths == 0)
        if empty.size:
            raise no_tokens_error(int(empty[0]))
        if truncated.any():
            truncated_texts.inc(int(truncated.sum()))
        probs = np.asarray(await self.call_model("infer", ids), np.float64)
        classes = manifest["classes"]
        threshold = manifest.get("decision_threshold") if len(classes) == 2 else None
        predictions = [
            TextPrediction(label=classes[k], probability=float(p[k]), probabilities=p.tolist(), tokens=int(n),
                           truncated=bool(t))
            for k, p, n, t in zip(decide(probs, threshold), probs, lengths, truncated)
        ]
        return TextPredictResponse(
            model_name=manifest["model_name"], model_version=manifest["version"], model_alias=manifest["alias"],
            classes=classes, decision_threshold=threshold, predictions=predictions,
            notes=TextNotes(truncated=int(truncated.sum()), max_len=max_len))

    @web.get("/metadata", response_model=TextMetadata, tags=["Service APIs"])
    async def metadata(self) -> TextMetadata:
        """Identity, metrics, lineage and input contract (max_len, tokenizer) of the served model."""
        m = await self._get_manifest()
        return TextMetadata(
            model_name=m["model_name"], version=m["version"], alias=m["alias"], alias_reason=m.get("alias_reason"),
            kind=m["kind"], task=m["task"], classes=m["classes"], decision_threshold=m.get("decision_threshold"),
            metrics=m["metrics"], lineage={k: m.get(k) for k in ("run_id", "data_hash", "git_sha", "onnx_sha256")},
            input=m["input"], output=m["output"], bento_tag=m.get("bento_tag"), created_at=m.get("created_at"),
            source=m["source"],
            limits={"max_texts": MAX_TEXTS, "max_text_chars": MAX_TEXT_CHARS, "max_len": m["input"]["max_len"],
                    "max_body_bytes": MAX_BODY_BYTES},
        )

    @web.get("/docs", include_in_schema=False)
    async def docs(self) -> RedirectResponse:
        """Swagger UI lives at / in BentoML; /docs is where people look for it."""
        return RedirectResponse("/")


TextClassifier.add_asgi_middleware(BodySizeLimitMiddleware, max_bytes=MAX_BODY_BYTES)
