"""Logging set-up for step entrypoints (called once in ``main()``, never at import)."""

import logging
import os
import warnings

# torch's ONNX exporter warns once per torchvision op (nms, roi_align, ...) that it cannot register
# it without torchvision: four lines per export, and no model here uses those ops.
TORCHVISION_OPS_LOGGER = "torch.onnx._internal.exporter._registration"
LIGHTNING_INFO_LOGGER = "lightning.pytorch.utilities.rank_zero"
# Lightning's pytree helper trips torch's own deprecation of LeafSpec: library code, nothing for us to change.
LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
# BentoML's build warns about every build-context file over 10 MiB: here that is the model itself,
# which deploy puts there on purpose (a text model's embedding table passes 10 MiB on a small corpus).
BENTO_BUILD_LOGGER = "bentoml._internal.bento.bento"
BENTO_BIG_FILE = "File size is larger than"


def _not_big_file(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(BENTO_BIG_FILE)


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("DLOPS_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # the ONNX exporter's optimiser logs every rewrite, Prefect's client every HTTP call, at INFO
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger(TORCHVISION_OPS_LOGGER).setLevel(logging.ERROR)
    # Lightning's start-up chatter (GPU/TPU available, a litlogger advert, dataloader notes); the
    # train step logs its own summary. Its warnings (rank_zero_warn) still show.
    logging.getLogger(LIGHTNING_INFO_LOGGER).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=LEAFSPEC_WARNING)
    logging.getLogger(BENTO_BUILD_LOGGER).addFilter(_not_big_file)
    # MLflow draws a progress bar for each artifact download (deploy and serving fetch the model back);
    # setdefault: a user who wants the bars back sets the variable
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
