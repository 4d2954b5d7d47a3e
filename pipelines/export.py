"""Torch -> ONNX export of a trained network with its preprocessing baked in, checked by onnx."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pipelines.tabular_prep import ONNX_OPSET

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


def export_onnx(model: nn.Module, input_shape: list[int], path: str | Path, example_batch: int = 4,
                output_name: str = OUTPUT_NAME) -> dict[str, Any]:
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
            model, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[output_name],
            dynamic_shapes=({0: batch},), external_data=False, verbose=False, opset_version=ONNX_OPSET,
        )
    program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    if not dims[0].dim_param:
        raise RuntimeError(f"{path}: batch axis was frozen to {dims[0].dim_value} during export")
    return {"opset": proto.opset_import[0].version, "input_shape": [d.dim_param or d.dim_value for d in dims],
            "ir_version": proto.ir_version}


class TargetScale(nn.Module):
    """A regression network that answers in the target's own units (training saw it standardised)."""

    def __init__(self, net: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.net, self.mean, self.std = net, float(mean), float(std)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x) * self.std + self.mean


def compose_with_preprocessing(pre: Any, net_path: str | Path, out_path: str | Path) -> dict[str, Any]:
    """One served graph: the fitted preprocessing (skl2onnx, one input per raw column) feeding the
    network. Inputs keep the table's column names; the output keeps the network's name."""
    import onnx
    from onnx import compose

    net = onnx.load(str(net_path))
    net_opset = {o.domain: o.version for o in net.opset_import}[""]
    pre_opset = {o.domain: o.version for o in pre.opset_import}[""]
    if net_opset != pre_opset:
        raise ValueError(f"opset mismatch: preprocessing {pre_opset}, network {net_opset} (export both alike)")
    net = compose.add_prefix(net, "net_", rename_outputs=False)
    pre.ir_version = net.ir_version = max(pre.ir_version, net.ir_version)
    merged = compose.merge_models(pre, net, io_map=[(pre.graph.output[0].name, f"net_{INPUT_NAME}")])
    onnx.checker.check_model(merged, full_check=True)
    onnx.save(merged, str(out_path))
    return {"inputs": [i.name for i in merged.graph.input], "outputs": [o.name for o in merged.graph.output],
            "opset": net_opset}
