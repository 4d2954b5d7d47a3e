"""Logging set-up for step entrypoints (called once in ``main()``, never at import)."""

import logging
import os


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("DLOPS_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # the ONNX exporter's optimiser logs every rewrite, Prefect's client every HTTP call, at INFO
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
