"""Torch -> ONNX export of a trained network with its preprocessing baked in, checked by onnx."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

INPUT_NAME, OUTPUT_NAME = "input", "logits"


class Deployable(nn.Module):
    """The plain network behind the train-fitted standardisation: it takes raw feature values,
    so clients and the service never re-implement preprocessing."""

    def __init__(self, net: nn.Module, preprocess: dict[str, Any], input_shape: list[int]) -> None:
        super().__init__()
        self.net = net
        mean = np.asarray(preprocess["mean"], np.float32)
        std = np.asarray(preprocess["std"], np.float32)
        if preprocess["kind"] == "standardize_columns":  # per-column stats of flattened features
            mean, std = mean.reshape(input_shape), std.reshape(input_shape)
        self.register_buffer("mean", torch.as_tensor(mean))
        self.register_buffer("std", torch.as_tensor(std))

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.mean) / self.std)


def export_onnx(model: nn.Module, input_shape: list[int], path: str | Path, example_batch: int = 4) -> dict[str, Any]:
    """Export with the dynamo exporter, a dynamic batch axis and one self-contained file.

    An example batch of 1 silently freezes the batch axis to 1 in this exporter, so the example
    is >= 2 and the exported input shape is checked afterwards.
    """
    import onnx

    if example_batch < 2:
        raise ValueError("example_batch must be >= 2 (a batch of 1 freezes the batch axis)")
    model = model.eval()
    example = torch.randn(example_batch, *input_shape)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad():
        program = torch.onnx.export(
            model, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},), external_data=False, verbose=False,
        )
    program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    if not dims[0].dim_param:
        raise RuntimeError(f"{path}: batch axis was frozen to {dims[0].dim_value} during export")
    return {"opset": proto.opset_import[0].version, "input_shape": [d.dim_param or d.dim_value for d in dims],
            "ir_version": proto.ir_version}
