"""BentoML 1.4 service over a deployed ONNX tabular model: JSON records in, labels + class
probabilities (classification) or values in target units (regression) out.

The same architecture as serving/service.py: ``TabularPredictor`` is the public HTTP API (strict
request validation, body-size limit, /predict, GET /metadata) and calls ``TabularModel``, which owns
the ONNX Runtime session and adaptively batches ``infer`` calls. The request schema is generated at
import from the manifest of the model being served (found like the model itself:
DLOPS_MODEL_URI / DLOPS_MODEL_DIR / artifacts/deploy), so /docs shows that model's columns.

    bentoml serve serving.tabular:TabularPredictor      # 127.0.0.1:3000
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from serving.common import RUNNER_CONNECTION, ModelClient, install_log_filter
from serving.limits import BodySizeLimitMiddleware
from serving.model import (LoadedModel, ModelLoadError, is_tabular, load_model_from, read_manifest,
                           resolve_model_dir, service_for)
from serving.runtime import softmax
from pipelines.modalities.tabular.serve import (MAX_BODY_BYTES, MAX_RECORDS, Notes, RecordPrediction, TabularMetadata,
                                     TabularPredictResponse, decide, feeds, records_type, tally, to_rows)

# Batching as in serving/service.py (max_latency_ms is a load-shedding deadline); a batch holds up
# to two full requests.
MAX_LATENCY_MS = int(os.environ.get("DLOPS_BATCH_MAX_LATENCY_MS", "250"))
MAX_BATCH_SIZE = int(os.environ.get("DLOPS_BATCH_MAX_SIZE", str(2 * MAX_RECORDS)))

install_log_filter()


def _schema_source() -> tuple[Path, str, dict[str, Any]]:
    """The model directory, its source and manifest: the request schema is built from it."""
    model_dir, source = resolve_model_dir()
    manifest = read_manifest(model_dir)
    if not is_tabular(manifest):
        raise ModelLoadError(f"{source}: not a tabular model (kind {manifest.get('kind')!r}); "
                             f"serve {service_for(manifest)}")
    return model_dir, source, manifest


MODEL_DIR, MODEL_SOURCE, SCHEMA_MANIFEST = _schema_source()
COLUMNS: list[dict[str, Any]] = SCHEMA_MANIFEST["input"]["columns"]
Records = records_type(COLUMNS)

imputed_values = bentoml.metrics.Counter(
    name="dlops_tabular_imputed_values",
    documentation="Record values sent to a fallback bucket: null (missing) or a category unseen in training "
                  "(unknown)",
    labelnames=["column", "bucket"],
)


@bentoml.service(name="dlops-tabular-model", workers=1, traffic={"timeout": 30},
                 runner_connection=RUNNER_CONNECTION)  # see serving/common.py (bentoml/BentoML#5540)
class TabularModel:
    """ONNX Runtime over the tabular model named by DLOPS_MODEL_URI / DLOPS_MODEL_DIR / artifacts/deploy."""

    def __init__(self) -> None:
        self.model: LoadedModel = load_model_from(MODEL_DIR, MODEL_SOURCE)  # the files the schema came from
        self.regression = self.model.manifest["task"] == "regression"
        self._run([[None] * len(COLUMNS)] * 2)  # warm-up

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def infer(self, rows: list[list[Any]]) -> list[list[float]]:
        """Per row (values in column order, None = missing): class probabilities, or [value]."""
        return self._run(rows)

    def _run(self, rows: list[list[Any]]) -> list[list[float]]:
        if any(len(row) != len(COLUMNS) for row in rows):
            raise bentoml.exceptions.InvalidArgument(f"expected rows of {len(COLUMNS)} values")
        try:
            inputs = feeds(rows, COLUMNS)
        except (TypeError, ValueError) as exc:
            raise bentoml.exceptions.InvalidArgument(f"bad row values: {exc}") from None
        (out,) = self.model.session.run([self.model.manifest["output"]["name"]], inputs)
        out = out.astype(np.float64)
        return out.reshape(-1, 1).tolist() if self.regression else softmax(out).tolist()

    @bentoml.api
    def manifest(self) -> dict[str, Any]:
        """The served model's manifest plus where it was loaded from (one source of truth)."""
        return {**self.model.manifest, "source": self.model.source}


web = FastAPI(title="dlops tabular", docs_url=None, redoc_url=None, openapi_url=None)


@bentoml.service(
    name="dlops-tabular",
    workers=1,
    # loopback by default (BentoML binds 0.0.0.0); `bentoml serve --host 0.0.0.0` or a container opens it up
    http={"host": "127.0.0.1", "port": 3000},
    traffic={"timeout": 30},
)
@bentoml.asgi_app(web, path="/")
class TabularPredictor(ModelClient):
    """Predictions for table records; the fields are the served model's training columns (see /metadata)."""

    model = bentoml.depends(TabularModel)

    async def _get_manifest(self) -> dict[str, Any]:
        manifest = await super()._get_manifest()
        # each process resolves the model itself: in registry mode an alias can move in between
        if manifest["input"]["columns"] != COLUMNS:
            raise ModelLoadError(f"the model service serves {manifest['source']} whose columns differ from this "
                                 f"API's request schema ({MODEL_SOURCE}); restart the service")
        return manifest

    @bentoml.api(route="/predict")
    async def predict(self, records: Records) -> TabularPredictResponse:
        """Predict 1 to 1024 records: every training column by name; null = missing value."""
        manifest = await self._get_manifest()
        rows = to_rows(records, COLUMNS)
        missing, unknown = tally(rows, COLUMNS)
        for bucket, counts in (("missing", missing), ("unknown", unknown)):
            for column, n in counts.items():
                imputed_values.labels(column=column, bucket=bucket).inc(n)
        out = np.asarray(await self.call_model("infer", rows), np.float64)
        classes, threshold = manifest["classes"], manifest.get("decision_threshold")
        if manifest["task"] == "regression":
            predictions = [RecordPrediction(value=float(v)) for v in out[:, 0]]
            threshold = None
        else:
            threshold = threshold if len(classes) == 2 else None
            predictions = [RecordPrediction(label=classes[k], probability=float(p[k]), probabilities=p.tolist())
                           for k, p in zip(decide(out, threshold), out)]
        return TabularPredictResponse(
            model_name=manifest["model_name"], model_version=manifest["version"], model_alias=manifest["alias"],
            task=manifest["task"], target=manifest.get("target"), classes=classes, decision_threshold=threshold,
            predictions=predictions, notes=Notes(missing_values=missing, unknown_categories=unknown))

    @web.get("/metadata", response_model=TabularMetadata, tags=["Service APIs"])
    async def metadata(self) -> TabularMetadata:
        """Identity, metrics, lineage and input schema (columns, types, categories) of the served model."""
        m = await self._get_manifest()
        return TabularMetadata(
            model_name=m["model_name"], version=m["version"], alias=m["alias"], alias_reason=m.get("alias_reason"),
            kind=m["kind"], task=m["task"], target=m.get("target"), classes=m["classes"],
            decision_threshold=m.get("decision_threshold"), metrics=m["metrics"],
            lineage={k: m.get(k) for k in ("run_id", "data_hash", "git_sha", "onnx_sha256")},
            input=m["input"], output=m["output"], bento_tag=m.get("bento_tag"), created_at=m.get("created_at"),
            source=m["source"], limits={"max_records": MAX_RECORDS, "max_body_bytes": MAX_BODY_BYTES},
        )

    @web.get("/docs", include_in_schema=False)
    async def docs(self) -> RedirectResponse:
        """Swagger UI lives at / in BentoML; /docs is where people look for it."""
        return RedirectResponse("/")


TabularPredictor.add_asgi_middleware(BodySizeLimitMiddleware, max_bytes=MAX_BODY_BYTES)
