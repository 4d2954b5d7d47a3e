"""A plain FastAPI + ONNX Runtime server: the reference ``serve_bench.py`` holds the dlops service to.

What a user would write by hand for the same model: the model directory loaded the same way
(``serving.model.load_model_from``: manifest, sha256, the modality's request side, the task), an ORT
session from ``serving.runtime.make_session`` (same threads/spinning settings), the SAME validation
as a pydantic body model ``{field: side.items_type()}`` (extra fields forbidden) taken as the route's
body parameter, ORT run inline in an ``async def`` route (as the service does: no thread pool hop),
and the task's ``respond()`` for the predictions. One uvicorn worker, 127.0.0.1, no access log
(``--access-log`` turns uvicorn's on), no admission control, no body limit, no metrics, no tracing.

    python -m benchmarks.fastapi_ref --model-dir /path/to/model --port 3100
"""

# no `from __future__ import annotations`: the route's body type is a local class
import argparse
import sys
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def create_app(model_dir: Path) -> Any:
    from fastapi import FastAPI
    from pydantic import ConfigDict, TypeAdapter, create_model

    from pipelines.modalities.schema import RequestError
    from serving.model import load_model_from

    model = load_model_from(model_dir.resolve(), str(model_dir))
    side, task, manifest = model.requests, model.task, model.manifest
    field = side.field
    # warm-up, as the service does: the first run allocates
    model.run(side.to_inputs(TypeAdapter(side.items_type()).validate_python(side.example())).feeds)

    Body = create_model("PredictRequest", __config__=ConfigDict(extra="forbid"), **{field: (side.items_type(), ...)})
    app = FastAPI(title=f"fastapi+ort reference: {manifest['model_name']}")

    @app.post("/predict")
    async def predict(body: Body) -> Any:  # type: ignore[valid-type]
        items = getattr(body, field)
        try:
            inputs = side.to_inputs(items)
        except RequestError as exc:
            from fastapi import HTTPException

            raise HTTPException(400, str(exc)) from None
        rows, fields = task.respond(model.run(inputs.feeds), manifest)
        if inputs.extras:
            rows = [{**row, **extra} for row, extra in zip(rows, inputs.extras)]
        return {"model_name": manifest["model_name"], "model_version": manifest["version"],
                "model_alias": manifest["alias"], "task": manifest.get("task"), "target": manifest.get("target"),
                **fields, "predictions": rows, "notes": inputs.notes}

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3100)
    parser.add_argument("--access-log", action="store_true", help="uvicorn's access log (one line a request)")
    args = parser.parse_args(argv)

    import uvicorn

    uvicorn.run(create_app(args.model_dir), host=args.host, port=args.port, workers=1,
                log_level="info" if args.access_log else "warning", access_log=args.access_log)


if __name__ == "__main__":
    main()
