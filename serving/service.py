"""One BentoML 1.4 service for every modality and task: ``POST /predict``, ``GET /metadata``, ``GET /card``.

The model (``DLOPS_MODEL_URI`` / ``DLOPS_MODEL_DIR`` / ``artifacts/deploy``) is loaded and checked
when this module is imported, so a missing, corrupt, sha-mismatched or unknown-kind model stops
``bentoml serve`` at once with one line (exit 1) instead of a worker restarting forever. What the
request looks like and how it becomes graph inputs comes from the model's modality (its
``RequestSide``: ``{"images": ...}``, ``{"records": ...}``, ``{"texts": ...}``); how outputs become
predictions comes from its task. ONNX Runtime runs in this process: no inter-process hop and, by
default, no batcher (the models here run in micro- to milliseconds); ``DLOPS_BATCH_MAX_ROWS`` turns on
opportunistic batching (a lone request runs at once; requests that queue behind a run share the next).

The routes are a FastAPI app mounted with ``bentoml.asgi_app``: the body is read under a size limit
and a time limit, only ``application/json`` is taken (415 otherwise) -- and ``multipart/form-data``
file uploads where the request side takes files (models of image files) -- parsed once and validated
by the modality's checks, which stop at the first problem and name it (400, ``{"error": "..."}``).
In front of everything, admission control answers 503 with ``Retry-After`` at once when more than
``DLOPS_MAX_INFLIGHT`` requests are in the service, so overload sheds instead of queueing.

Answered requests are recorded for drift analysis when ``DLOPS_RECORD_DIR`` is set (``serving/record.py``:
sampled, capped, off the request path), and ``/metrics`` counts what drifts: predicted labels, their
confidence, and the inputs the model treats specially.

    bentoml serve serving.service:Predictor      # 127.0.0.1:3000; make serve picks the model
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import bentoml
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from pipelines.modalities.schema import ModelMetadata, RequestError
from serving.batching import Batcher
from serving.common import AdmissionControl, RequestTimeout, error_body
from serving.limits import BodySizeLimitMiddleware, MultipartError, install_header_timeout, parse_multipart
from serving.model import LoadedModel, ModelLoadError, load_model, resolve_model_dir
from serving.record import Recorder, from_env as record_config_from_env

logger = logging.getLogger("bentoml.dlops")  # under bentoml: its logging config shows it

# per worker; beyond ~32 queued requests a 1-core worker only adds queueing delay (benchmarks/overload_bench.py)
MAX_INFLIGHT = int(os.environ.get("DLOPS_MAX_INFLIGHT", "32"))
BODY_TIMEOUT_S = float(os.environ.get("DLOPS_BODY_TIMEOUT_S", "10"))
# no response started within this many seconds -> 504 (serving.common.RequestTimeout)
REQUEST_TIMEOUT_S = int(os.environ.get("DLOPS_REQUEST_TIMEOUT_S", "30"))
WORKERS = int(os.environ.get("DLOPS_WORKERS", "1"))
# > 0: requests that arrive while the model runs share its next run, up to this many rows (serving/batching.py)
BATCH_MAX_ROWS = int(os.environ.get("DLOPS_BATCH_MAX_ROWS", "0"))
# Tokenizing 128 long texts takes a while: requests with more items than this run off the event loop
INLINE_MAX_ITEMS = int(os.environ.get("DLOPS_INLINE_MAX_ITEMS", "32"))
# Parsing a body of image files (up to 32 MiB of JSON or multipart) takes tens of ms: off the event loop too
INLINE_MAX_BYTES = int(os.environ.get("DLOPS_INLINE_MAX_BYTES", str(1024 * 1024)))
# BentoML's per-request access log line and OpenTelemetry spans cost more CPU than the whole request
# (benchmarks/serve_bench.py: 1.44 -> 0.84 ms without the spans, -0.3 ms without the log line); the
# service logs what it rejects itself. DLOPS_ACCESS_LOG=1 turns BentoML's access log back on.
ACCESS_LOG = os.environ.get("DLOPS_ACCESS_LOG") == "1"
LONE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")  # a high or low surrogate escape (pairs pass the check)


def _load() -> LoadedModel:
    """The model, or exit 1 with one line: fail fast, never a worker restart loop."""
    try:
        model = load_model()
        inputs = model.requests.to_inputs(TypeAdapter(model.requests.items_type()).validate_python(
            model.requests.example()))
        model.run(inputs.feeds)  # warm-up: the first run allocates
    except ModelLoadError as exc:
        sys.stderr.write(f"error: cannot serve the model: {exc}\n")
        raise SystemExit(1) from None
    return model


MODEL = _load()
MANIFEST: dict[str, Any] = MODEL.manifest
SIDE = MODEL.requests
ROUTE = "/" + MODEL.task.route  # /predict, /score (anomaly), /embed (embedding), /generate (generation)
FIELD = SIDE.field
ITEMS = TypeAdapter(SIDE.items_type())
JSON, MULTIPART = "application/json", "multipart/form-data"
CONTENT_TYPES = (JSON, MULTIPART) if SIDE.accepts_files else (JSON,)
CARD_FILE = "card.md"


def _public_source(source: str) -> str:
    """Where the model came from, without this machine's absolute paths."""
    return source if "://" in source or source.startswith("models:") else f"directory {Path(source).name}"


def _read_card() -> Optional[str]:
    """The model card written at deploy (``card.md`` in the model's directory; from the registry it may
    sit in a subfolder, as manifest.json does), or None when the model has none."""
    model_dir, _ = resolve_model_dir()  # registry mode: the directory already downloaded by _load
    found = sorted(model_dir.rglob(CARD_FILE), key=lambda p: len(p.parts)) if model_dir.is_dir() else []
    if not found:
        return None
    try:
        return found[0].read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        logger.warning("cannot read the model card %s: %s", found[0], exc)
        return None


CARD = _read_card()  # a deployed version's card does not change while it is served


# ---------------------------------------------------------------- schemas (from the plug-ins)

Prediction = create_model("Prediction", **MODEL.task.prediction_fields(MANIFEST), **SIDE.extra_fields())
Notes = create_model("Notes", **SIDE.notes_fields())
PredictResponse = create_model(
    "PredictResponse",
    model_name=(str, ...), model_version=(Optional[str], ...), model_alias=(Optional[str], ...),
    task=(str, Field(description="the model's task")), target=(Optional[str], Field(description="what is predicted")),
    **MODEL.task.response_fields(MANIFEST),
    predictions=(list[Prediction], Field(description="one per item, in request order")),
    notes=(Notes, Field(description="about the request as a whole")),
)
PredictRequest = create_model("PredictRequest", __config__=ConfigDict(extra="forbid"),
                              **{FIELD: (SIDE.items_type(), ...)})


class ErrorBody(BaseModel):
    error: str = Field(description="what is wrong, naming the item and field at fault")


class Metadata(ModelMetadata):
    """/metadata: identity, quality, lineage and input contract of the served model."""

    kind: str
    target: Optional[str] = None
    primary_metric: Optional[str] = None
    decision_threshold: Optional[float] = None
    route: str = Field("predict", description="the model's POST route: predict, score, embed or generate")
    rule: Optional[dict[str, Any]] = Field(None, description="the task's decision rule fitted in evaluate "
                                                             "(anomaly: threshold; embedding: centroids)")


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    """``schema`` with its ``#/$defs/...`` references replaced by the definitions (none are recursive)."""
    if isinstance(schema, dict):
        ref = schema.get("$ref", "")
        if ref.startswith("#/$defs/"):
            return _inline(defs[ref.rsplit("/", 1)[1]], defs)
        return {k: _inline(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


def _request_schema() -> dict[str, Any]:
    """The request body's JSON schema, self-contained (the route parses the body itself, for speed and
    control, so FastAPI does not generate it; BentoML merges the route's spec into /docs.json)."""
    schema = PredictRequest.model_json_schema()
    return _inline(schema, schema.get("$defs", {}))


def _request_content() -> dict[str, Any]:
    """The request body's media types for /docs: JSON, and file uploads where the side takes them."""
    content = {JSON: {"schema": _request_schema()}}
    if SIDE.accepts_files:
        content[MULTIPART] = {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"},
                                    "description": f"1 to {SIDE.max_items} files, one part each (any field "
                                                   "name; the part's filename names the prediction)"}}}}
    return content


ERRORS = {400: "invalid request (the message names the item and field)", 408: "the body did not arrive in time",
          413: "body over the size limit", 415: f"content type other than {' or '.join(CONTENT_TYPES)}",
          503: "overloaded: retry after the Retry-After header's seconds"}


# ---------------------------------------------------------------- the app


web = FastAPI(title=f"dlops {MANIFEST.get('kind') or 'image'} {MANIFEST.get('task')}", docs_url=None,
              redoc_url=None, openapi_url=None)


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json", headers=headers)


def _bad(message: str, status: int = 400) -> Response:
    rejected.labels(reason=str(status)).inc()
    logger.info("POST %s rejected (%d): %s", ROUTE, status, message[:200])
    return _json(error_body(message), status)


async def _read_body(request: Request, media_type: str) -> bytes | Response:
    """The whole body, or the 4xx response that says why there is none."""
    if media_type not in CONTENT_TYPES:
        return _bad(f"content type {media_type or 'missing'!r}: send {' or '.join(CONTENT_TYPES)}", 415)
    try:
        return await asyncio.wait_for(request.body(), BODY_TIMEOUT_S)
    except asyncio.TimeoutError:
        return _bad(f"the request body did not arrive within {BODY_TIMEOUT_S:g} s", 408)


def _read_json(body: bytes) -> Any | Response:
    """The parsed body, or the 400 response that says why there is none."""
    try:
        # stdlib json: NaN/Infinity literals parse, so the checks can name where they are
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, > 4300-digit ints
        return _bad(f"Invalid JSON: {str(exc)[:200]}")
    if LONE_SURROGATE.search(body):  # "\ud800" parses to a str no UTF-8 encoder takes (ORT, the response)
        try:
            json.dumps(payload, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return _bad("Invalid JSON: a \\u escape is a lone UTF-16 surrogate (not a character)")
    return payload


def _items(payload: Any) -> Any | Response:
    if not isinstance(payload, dict):
        return _bad(f"Input should be an object with one field {FIELD!r}")
    if FIELD not in payload:
        return _bad(f"{FIELD}: Field required")
    extra = [k for k in payload if k != FIELD]
    if extra:
        return _bad(f"{str(extra[0])[:60]}: unknown field (the body has one field, {FIELD!r})")
    try:
        return ITEMS.validate_python(payload[FIELD])
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"].startswith("invalid_"):  # the modality's own checks name the place themselves
            return _bad(first["msg"])
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
        return _bad(f"{FIELD}{where}: {first['msg']}")
    except (TypeError, ValueError, OverflowError) as exc:
        return _bad(f"{FIELD}: {exc}")


def _files(body: bytes, content_type: str) -> tuple[Any, Callable[[], list[dict[str, str]]]] | Response:
    """The side's items from a multipart/form-data body (every part a file, any field name), and a
    function giving them in the JSON API's shape for recording (base64 only if the request is recorded)."""
    try:
        parts = parse_multipart(body, content_type, SIDE.max_items)
    except MultipartError as exc:
        return _bad(str(exc))
    fields = [part.field for part in parts if part.filename is None]
    if fields:
        return _bad(f"form field {fields[0][:60]!r} is not a file: send each image as a file part "
                    "(curl -F file=@cat.jpg)")
    files = [(part.filename or part.field, part.data) for part in parts]
    try:
        items = SIDE.from_files(files)
    except RequestError as exc:
        return _bad(str(exc))
    return items, lambda: [{"name": name, "data": base64.b64encode(data).decode("ascii")} for name, data in files]


def _parse(body: bytes, content_type: str, media_type: str) -> tuple[Any, Any] | Response:
    """The validated items of a body and its items as sent (for recording), or the 400 response that
    names what is wrong."""
    if media_type == MULTIPART:
        return _files(body, content_type)
    payload = _read_json(body)
    if isinstance(payload, Response):
        return payload
    items = _items(payload)
    return items if isinstance(items, Response) else (items, payload[FIELD])


def _predict(items: Any) -> dict[str, Any]:
    inputs = SIDE.to_inputs(items)
    return _answer(inputs, MODEL.run(inputs.feeds))


def _answer(inputs: Any, outputs: Any) -> dict[str, Any]:
    """The response body for a request's model inputs and the graph's output rows for them."""
    rows, fields = MODEL.task.respond(outputs, MANIFEST)
    if inputs.extras:
        rows = [{**row, **extra} for row, extra in zip(rows, inputs.extras)]
    for note, counts in inputs.notes.items():
        if isinstance(counts, dict):
            for key, n in counts.items():
                input_notes.labels(note=note, key=key).inc(n)
        elif isinstance(counts, int) and not isinstance(counts, bool) and counts and note != "max_len":
            input_notes.labels(note=note, key="").inc(counts)
    _count_predictions(rows)
    return {"model_name": MANIFEST["model_name"], "model_version": MANIFEST["version"],
            "model_alias": MANIFEST["alias"], "task": MANIFEST.get("task"), "target": MANIFEST.get("target"),
            **fields, "predictions": rows, "notes": inputs.notes}


@web.post(ROUTE, response_model=PredictResponse, tags=["Service APIs"],
          responses={code: {"model": ErrorBody, "description": text} for code, text in ERRORS.items()},
          openapi_extra={"requestBody": {"required": True, "content": _request_content()}})
async def predict(request: Request) -> Response:
    """Answer 1 or more items (see the request schema for the limits): predictions, anomaly scores,
    embeddings or generated images, as the model's task does."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    body = await _read_body(request, media_type)
    if isinstance(body, Response):
        return body
    if SIDE.offload and len(body) > INLINE_MAX_BYTES:
        parsed = await asyncio.to_thread(_parse, body, content_type, media_type)
    else:
        parsed = _parse(body, content_type, media_type)
    if isinstance(parsed, Response):
        return parsed
    items, sent = parsed
    offload = SIDE.offload or len(items) > INLINE_MAX_ITEMS
    try:
        if BATCHER is not None:  # the model runs in a thread, with the requests that queued behind it
            inputs = await asyncio.to_thread(SIDE.to_inputs, items) if offload else SIDE.to_inputs(items)
            result = _answer(inputs, await BATCHER.run(inputs.feeds))
        elif offload:
            result = await asyncio.to_thread(_predict, items)
        else:
            result = _predict(items)
    except RequestError as exc:
        return _bad(str(exc))
    response = _json(result)
    if RECORDER is not None and RECORDER.sampled():  # only answered requests; the writer thread does the rest
        RECORDER.offer(ROUTE, sent, result["predictions"], len(body))
    return response


@web.get("/metadata", response_model=Metadata, tags=["Service APIs"])
async def metadata() -> Response:
    """Identity, metrics, lineage and input contract of the served model (from its manifest)."""
    m = MANIFEST
    return _json(Metadata(
        model_name=m["model_name"], version=m["version"], alias=m["alias"], alias_reason=m.get("alias_reason"),
        kind=m.get("kind") or "image", task=m.get("task"), target=m.get("target"), classes=m.get("classes"),
        primary_metric=m.get("primary_metric"), decision_threshold=m.get("decision_threshold"), metrics=m["metrics"],
        lineage={k: m.get(k) for k in ("run_id", "data_hash", "git_sha", "onnx_sha256")},
        input=m["input"], output=m["output"], bento_tag=m.get("bento_tag"), created_at=m.get("created_at"),
        route=MODEL.task.route, rule=m.get("rule") or None,
        source=_public_source(MODEL.source), limits=SIDE.limits()).model_dump())


class MarkdownResponse(Response):
    media_type = "text/markdown"  # Starlette adds "; charset=utf-8"


@web.get("/card", response_class=MarkdownResponse, tags=["Service APIs"],
         responses={200: {"description": "the model card (Markdown)",
                          "content": {"text/markdown": {"schema": {"type": "string"}}}},
                    404: {"description": "the served model has no card",  # JSON, unlike the route's 200
                          "content": {JSON: {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}})
async def card() -> Response:
    """The served version's model card: what it is for, its data, metrics and limits (``card.md``,
    written at deploy)."""
    if CARD is None:
        return _json(error_body(f"the served model has no card ({CARD_FILE} is not in its directory)"), 404)
    return MarkdownResponse(CARD)


@web.get("/docs", include_in_schema=False)
async def docs() -> RedirectResponse:
    """Swagger UI lives at / in BentoML; /docs is where people look for it."""
    return RedirectResponse("/")


rejected = bentoml.metrics.Counter(name="dlops_rejected_requests", documentation="Requests answered 4xx/503, by status",
                                   labelnames=["reason"])
input_notes = bentoml.metrics.Counter(
    name="dlops_input_notes", labelnames=["note", "key"],
    documentation="What requests held that the model treats specially: missing values and unknown categories "
                  "per column (tables), texts cut to max_len (texts)")
predictions = bentoml.metrics.Counter(name="dlops_predictions", labelnames=["label"],
                                      documentation="Items answered, by predicted label (models that predict labels)")
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
confidence = bentoml.metrics.Histogram(
    name="dlops_prediction_confidence", buckets=CONFIDENCE_BUCKETS,
    documentation="The predicted label's probability, per item (models that predict labels)")
recorded = bentoml.metrics.Counter(name="dlops_recorded_requests",
                                   documentation="Requests written to DLOPS_RECORD_DIR")
record_dropped = bentoml.metrics.Counter(
    name="dlops_record_dropped", labelnames=["reason"],
    documentation="Sampled requests not recorded: queue_full (the writer fell behind), too_large "
                  "(one line over the file size), write_error (disk)")


_per_label: dict[str, Any] = {}  # label -> its counter child: labels() costs more than inc() (the classes bound it)


def _count_predictions(rows: list[dict[str, Any]]) -> None:
    """Drift signals of the answers: label counts and confidence, for rows that carry a label (tasks
    without labels add nothing here; their inputs still count in dlops_input_notes): ~10 us a row
    (benchmarks/record_bench.py)."""
    counts: dict[str, int] = {}
    for row in rows:
        label, probability = row.get("label"), row.get("probability")
        if label is not None and probability is not None:  # a predicted label (a generated image's is asked for)
            counts[label] = counts.get(label, 0) + 1
            confidence.observe(probability)
    for label, n in counts.items():
        child = _per_label.get(label)
        if child is None:
            child = _per_label[label] = predictions.labels(label=label)
        child.inc(n)


def _recorder() -> Optional[Recorder]:
    """The request recorder when DLOPS_RECORD_DIR is set; bad settings stop the service with one line."""
    try:
        config = record_config_from_env(os.environ)
        if config is None:
            return None
        recorder = Recorder(config, MANIFEST["model_name"], MANIFEST["version"], on_written=recorded.inc,
                            on_dropped=lambda reason, n: record_dropped.labels(reason=reason).inc(n))
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"error: cannot record requests: {exc}\n")
        raise SystemExit(1) from None
    logger.info("recording %g%% of answered requests into %s (at most %g MB)", 100 * config.sample,
                recorder.folder, config.max_bytes / (1024 * 1024))
    return recorder


RECORDER = _recorder()


def _batcher() -> Optional[Batcher]:
    """Opportunistic batching when DLOPS_BATCH_MAX_ROWS > 0 (serving/batching.py); off by default."""
    if BATCH_MAX_ROWS <= 0:
        return None
    batches = bentoml.metrics.Histogram(
        name="dlops_batch_requests", buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        documentation="Requests per model run (DLOPS_BATCH_MAX_ROWS batching)")
    logger.info("batching: requests that queue while the model runs share its next run (at most %d rows)",
                BATCH_MAX_ROWS)
    return Batcher(MODEL.run, BATCH_MAX_ROWS, on_batch=lambda requests, rows: batches.observe(requests))


BATCHER = _batcher()


@bentoml.service(
    name="dlops",
    workers=WORKERS,
    # loopback by default (BentoML binds 0.0.0.0); `bentoml serve --host 0.0.0.0` or a container opens it up
    http={"host": "127.0.0.1", "port": 3000},
    traffic={"timeout": REQUEST_TIMEOUT_S},
    logging={"access": {"enabled": ACCESS_LOG}},
    tracing={"excluded_urls": [ROUTE, "/metadata", "/card"]},
)
@bentoml.asgi_app(web, path="/")
class Predictor:
    """The deployed model behind POST /predict, GET /metadata and GET /card (ONNX Runtime in this process)."""

    def __init__(self) -> None:
        self.model = MODEL
        if RECORDER is not None:  # the series show from the start, at 0
            for reason in ("queue_full", "too_large", "write_error"):
                record_dropped.labels(reason=reason)

    async def __is_ready__(self) -> bool:
        return self.model is not None


def _admission_control_first() -> None:
    """Put admission control in front of BentoML's own middlewares (metrics, tracing, access log),
    which otherwise wrap every service middleware: a shed request then costs 0.1 ms instead of
    0.55-0.69 ms (measured), so shedding itself cannot saturate the event loop. BentoML's per-request
    timeout becomes ``RequestTimeout`` (its own leaves a live timer per request for 30 s). BentoML
    (pinned 1.4.39) has no option for either; if its internals move, the middlewares stay BentoML's."""
    try:
        from _bentoml_impl.server.app import ServiceAppFactory
        from bentoml._internal.server.http.traffic import TimeoutMiddleware
        from starlette.middleware import Middleware
    except ImportError:
        return
    original = ServiceAppFactory.__dict__.get("middlewares")
    if not isinstance(original, property) or getattr(original.fget, "dlops_admission_first", False):
        return

    def middlewares(self: Any) -> list[Any]:
        found = [Middleware(RequestTimeout, timeout=m.kwargs["timeout"])
                 if m.cls is TimeoutMiddleware and "timeout" in m.kwargs else m for m in original.fget(self)]
        return sorted(found, key=lambda m: m.cls is not AdmissionControl)  # stable: the rest keep their order

    middlewares.dlops_admission_first = True  # type: ignore[attr-defined]
    ServiceAppFactory.middlewares = property(middlewares)


Predictor.add_asgi_middleware(BodySizeLimitMiddleware, max_bytes=SIDE.max_body_bytes)
Predictor.add_asgi_middleware(AdmissionControl, max_inflight=MAX_INFLIGHT, paths=(ROUTE,),
                              on_shed=lambda: rejected.labels(reason="503").inc())
_admission_control_first()
install_header_timeout()  # DLOPS_HEADER_TIMEOUT_S (10): slow or silent clients get 408


# Everything imported and loaded so far (BentoML, FastAPI, pydantic, the model: ~1 M objects) lives as long
# as the process: out of the garbage collector's sight, a full collection under load costs ~5-10 ms instead
# of 50-60 ms every second or so (benchmarks/overload_bench.py: 503 p99 254 -> 53 ms at 2x capacity).
gc.collect()
gc.freeze()
