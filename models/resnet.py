"""Small residual network for images of any size (digits, MNIST, downsized photos)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from models.registry import register_model


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN with an identity (or 1x1 conv + BN) shortcut, ReLU after the sum."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.shortcut(x))


@register_model("resnet_small")
class ResNetSmall(nn.Module):
    """Stem (3x3 conv, BN, ReLU), one stage of ``blocks`` basic blocks per entry of ``channels``
    (stride 2 between stages while the map is >= 4x4), global average pool, dropout, linear head.

    Args:
        input_shape: ``(C, H, W)``; any channel count and size.
        num_outputs: logits per image.
        channels: width of each stage.
        blocks: basic blocks per stage.
        dropout: before the linear head.
        stem_stride: 2 halves large photos (e.g. >= 64x64) once up front, ~4x cheaper per image.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        channels: Sequence[int] = (32, 64, 128),
        blocks: int = 1,
        dropout: float = 0.1,
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"resnet_small needs image inputs (C, H, W), got input shape {tuple(input_shape)}")
        if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or not channels \
                or not all(_positive_int(c) for c in channels):
            raise ValueError(f"model.kwargs.channels: a non-empty list of positive ints, got {channels!r}")
        if not _positive_int(blocks):
            raise ValueError(f"model.kwargs.blocks: a positive int, got {blocks!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"model.kwargs.dropout: a number in [0, 1), got {dropout!r}")
        if stem_stride not in (1, 2) or isinstance(stem_stride, bool):
            raise ValueError(f"model.kwargs.stem_stride: 1 or 2, got {stem_stride!r}")
        in_ch, size = int(input_shape[0]), min(int(input_shape[1]), int(input_shape[2]))
        if in_ch < 1 or size < 1:
            raise ValueError(f"resnet_small needs a non-empty image, got input shape {tuple(input_shape)}")
        if stem_stride == 2 and size < 8:  # keep the stem from eating tiny images
            stem_stride = 1
        self.stem = nn.Sequential(
            nn.Conv2d(in_ch, channels[0], 3, stride=stem_stride, padding=1, bias=False),
            nn.BatchNorm2d(channels[0]), nn.ReLU(),
        )
        size = (size + stem_stride - 1) // stem_stride
        in_ch = channels[0]
        stages: list[nn.Module] = []
        for i, out_ch in enumerate(channels):
            stride = 2 if i > 0 and size >= 4 else 1  # downsample only while the map stays >= 2x2
            size = (size + stride - 1) // stride
            for j in range(blocks):
                stages.append(BasicBlock(in_ch, out_ch, stride if j == 0 else 1))
                in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_ch, num_outputs))

    def forward(self, x: Tensor) -> Tensor:
        # mean over H, W rather than AdaptiveAvgPool2d: one ReduceMean in ONNX, any map size
        return self.head(self.stages(self.stem(x)).mean(dim=(2, 3)))
