"""Torch -> ONNX export of a trained network with its preprocessing baked in, checked by onnx."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pipelines.plugins import ONNX_OPSET

INPUT_NAME, OUTPUT_NAME = "input", "logits"


class Deployable(nn.Module):
    """The plain network behind the train-fitted standardisation: it takes raw feature values,
    so clients and the service never re-implement preprocessing."""

    def __init__(self, net: nn.Module, preprocess: dict[str, Any], input_shape: list[int]) -> None:
        super().__init__()
        self.net = net
        # scalars (one mean/std over all values) or per-position arrays shaped like one input
        mean = np.asarray(preprocess["mean"], np.float32).reshape(input_shape if np.size(preprocess["mean"]) > 1 else ())
        std = np.asarray(preprocess["std"], np.float32).reshape(input_shape if np.size(preprocess["std"]) > 1 else ())
        self.register_buffer("mean", torch.as_tensor(mean))
        self.register_buffer("std", torch.as_tensor(std))

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.mean) / self.std)


def token_example(batch: int = 4, max_len: int = 7, vocab_size: int = 2, seed: int = 0) -> Tensor:
    """An int64 ``[batch, max_len]`` example for sequence models: ids in ``[1, vocab_size)``, rows of
    unequal lengths (the longest fills ``max_len``), right-padded with 0. Sizes stay >= 2 so that
    neither axis is frozen by the exporter."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, max(vocab_size, 2), (batch, max_len), generator=g)
    lengths = torch.linspace(max_len, 1, batch).round().long()
    return torch.where(torch.arange(max_len)[None, :] < lengths[:, None], ids, 0)


def _clear_rnn_dispatch_cache() -> None:
    """Forget dispatch decisions cached on the RNN overloads by an earlier export.

    The first export decomposes ``aten.lstm.input`` (``aten.gru.input``) and caches the chosen
    kernel (``AutogradCPU -> lstm_impl``) in ``OpOverload._dispatch_cache``; a second dynamo export
    of an LSTM/GRU in the same process goes through that stale entry and silently bakes in the
    example's sequence length (measured on torch 2.13). Clearing it costs one re-lookup per export.
    """
    for packet in (torch.ops.aten.lstm, torch.ops.aten.gru, torch.ops.aten.rnn_tanh, torch.ops.aten.rnn_relu):
        for overload in ("input", "data"):
            cache = getattr(getattr(packet, overload, None), "_dispatch_cache", None)
            if cache is not None:
                cache.clear()


def export_onnx(model: nn.Module, input_shape: list[int], path: str | Path, example_batch: int = 4,
                output_name: str = OUTPUT_NAME, example: Tensor | None = None,
                dynamic_axes: dict[int, str] | None = None) -> dict[str, Any]:
    """Export with the dynamo exporter, dynamic axes and one self-contained file.

    By default the example is a float ``[example_batch, *input_shape]`` batch with a dynamic batch
    axis. Sequence models pass ``example`` (its dtype is kept, e.g. ``token_example()``) and
    ``dynamic_axes={0: "batch", 1: "seq"}``. An example size of 1 silently freezes that axis in this
    exporter, so every dynamic axis of the example is >= 2 and the exported input shape is checked.
    """
    import onnx

    if example is None:
        if example_batch < 2:
            raise ValueError("example_batch must be >= 2 (a batch of 1 freezes the batch axis)")
        example = torch.randn(example_batch, *input_shape)
    axes = dict(dynamic_axes or {0: "batch"})
    for axis, name in axes.items():
        if example.shape[axis] < 2:
            raise ValueError(f"example axis {axis} ({name!r}) has size {example.shape[axis]}: "
                             "an example size of 1 freezes the axis")
    shapes = {axis: torch.export.Dim(name, min=1, max=65536) for axis, name in axes.items()}
    model = model.eval()
    _clear_rnn_dispatch_cache()
    with torch.no_grad():
        program = torch.onnx.export(
            model, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[output_name],
            dynamic_shapes=(shapes,), external_data=False, verbose=False, opset_version=ONNX_OPSET,
        )
    program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    frozen = {name: dims[axis].dim_value for axis, name in axes.items() if not dims[axis].dim_param}
    if frozen:
        raise RuntimeError(f"{path}: dynamic axes frozen during export: {frozen}")
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
