"""Multi-layer perceptron over flattened inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from models.registry import register_model


def mlp_layers(width: int, hidden: Sequence[int], num_outputs: int, dropout: float,
               batchnorm: bool) -> list[nn.Module]:
    """Linear (+ BatchNorm) + ReLU + Dropout per hidden size, then the output Linear."""
    if not hidden or any(h < 1 for h in hidden):
        raise ValueError(f"hidden must be a non-empty list of positive sizes, got {hidden}")
    layers: list[nn.Module] = []
    for h in hidden:
        layers.append(nn.Linear(width, h))
        if batchnorm:
            layers.append(nn.BatchNorm1d(h))
        layers += [nn.ReLU(), nn.Dropout(dropout)]
        width = h
    layers.append(nn.Linear(width, num_outputs))
    return layers


@register_model("mlp")
class MLP(nn.Module):
    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.1,
        batchnorm: bool = True,
    ) -> None:
        super().__init__()
        width = math.prod(input_shape)
        self.net = nn.Sequential(nn.Flatten(), *mlp_layers(width, hidden, num_outputs, dropout, batchnorm))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
