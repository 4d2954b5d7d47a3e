"""Small VGG-style CNN for low-resolution images (e.g. 8x8 digits, 28x28 MNIST)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from models.registry import register_model


@register_model("cnn")
class CNN(nn.Module):
    """Blocks of two 3x3 conv + BN + ReLU, 2x2 max-pool between blocks, global average pool, MLP head."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"cnn needs image inputs (C, H, W), got input shape {tuple(input_shape)}")
        if not channels:
            raise ValueError("channels must list at least one block width")
        in_ch, size = input_shape[0], min(input_shape[1:])
        blocks: list[nn.Module] = []
        for i, out_ch in enumerate(channels):
            if i > 0 and size >= 4:  # pool only while the map stays >= 2x2
                blocks.append(nn.MaxPool2d(2))
                size //= 2
            for _ in range(2):
                blocks += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU()]
                in_ch = out_ch
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_ch, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, num_outputs),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)))
