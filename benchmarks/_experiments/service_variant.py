"""serving.service's app under different BentoML settings (benchmark experiments only; not the product).

    DLOPS_X_ACCESS_LOG=0  BentoML access log off      DLOPS_X_METRICS=0  BentoML metrics middleware off
    DLOPS_X_TRACING_OFF=1 tracing.excluded_urls=[/predict]
    DLOPS_X_BARE=1        /predict answers a constant (no parse, no model): the BentoML stack's own cost
    DLOPS_X_ADMISSION_FIRST=1  AdmissionControl moved in front of all BentoML middlewares (monkeypatch)
"""

from __future__ import annotations

import os

import bentoml
from fastapi import FastAPI
from fastapi.responses import Response

from serving import service as base
from serving.common import AdmissionControl
from serving.limits import BodySizeLimitMiddleware

config: dict = {}
if os.environ.get("DLOPS_X_ACCESS_LOG") == "0":
    config["logging"] = {"access": {"enabled": False}}
if os.environ.get("DLOPS_X_METRICS") == "0":
    config["metrics"] = {"enabled": False}
if os.environ.get("DLOPS_X_TRACING_OFF") == "1":  # OpenTelemetry middleware skips excluded URLs at once
    config["tracing"] = {"excluded_urls": ["/predict"]}

app = base.web
if os.environ.get("DLOPS_X_BARE") == "1":
    app = FastAPI()
    CONST = b'{"ok": true}'

    @app.post("/predict")
    async def predict() -> Response:
        return Response(CONST, media_type="application/json")


@bentoml.service(name="dlops", workers=1, http={"host": "127.0.0.1", "port": 3000}, traffic={"timeout": 30}, **config)
@bentoml.asgi_app(app, path="/")
class Predictor:
    def __init__(self) -> None:
        self.model = base.MODEL

    async def __is_ready__(self) -> bool:
        return True


Predictor.add_asgi_middleware(BodySizeLimitMiddleware, max_bytes=base.SIDE.max_body_bytes)
Predictor.add_asgi_middleware(AdmissionControl, max_inflight=base.MAX_INFLIGHT, paths=("/predict",))

if os.environ.get("DLOPS_X_ADMISSION_FIRST") == "1":
    # experiment: admission control outermost, before BentoML's metrics/tracing/access-log middlewares
    from _bentoml_impl.server.app import ServiceAppFactory

    _orig = ServiceAppFactory.middlewares

    def _middlewares(self):  # type: ignore[no-untyped-def]
        found = _orig.fget(self)
        first = [m for m in found if m.cls is AdmissionControl]
        return first + [m for m in found if m.cls is not AdmissionControl]

    ServiceAppFactory.middlewares = property(_middlewares)
