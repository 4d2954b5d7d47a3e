"""Architectures for tables of numeric + categorical columns (churn-like, house-price-like).

Input contract with the preprocessing step: ONE float32 tensor ``[N, F]``, ``F = input_shape[0]``.
The first ``F - len(cardinalities)`` columns are standardised numeric features; the last
``len(cardinalities)`` hold category indices stored as floats (0 = unknown, 1 = missing,
2.. = known categories), so ``cardinalities[j]`` already counts those two buckets. Indices are
clamped into ``[0, cardinalities[j] - 1]``: an out-of-range value at serving time lands in the
last category of the column instead of crashing the Gather.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.mlp import mlp_layers
from models.registry import register_model


def _split_columns(input_shape: Sequence[int], cardinalities: Sequence[int]) -> tuple[int, list[int]]:
    """Validate the input contract; return (number of numeric columns, cardinalities)."""
    if len(input_shape) != 1:
        raise ValueError(f"tabular models need flat inputs (F,), got input shape {tuple(input_shape)}")
    cards = [int(c) for c in cardinalities]
    n_num = input_shape[0] - len(cards)
    if n_num < 0:
        raise ValueError(f"{len(cards)} categorical columns do not fit in {input_shape[0]} input columns")
    if n_num + len(cards) == 0:
        raise ValueError("no input columns")
    if any(c < 2 for c in cards):
        raise ValueError(f"each cardinality counts the missing and unknown buckets, so is >= 2; got {cards}")
    return n_num, cards


class CategoryIndex(nn.Module):
    """Float category columns -> clamped int64 indices, optionally shifted into one shared table."""

    def __init__(self, cardinalities: Sequence[int], shared_table: bool) -> None:
        super().__init__()
        cards = torch.tensor(list(cardinalities), dtype=torch.long)
        offsets = torch.cumsum(cards, 0) - cards if shared_table else torch.zeros_like(cards)
        self.register_buffer("low", offsets, persistent=False)
        self.register_buffer("high", offsets + cards - 1, persistent=False)
        self.shared_table = shared_table

    def forward(self, x_cat: Tensor) -> Tensor:
        # Cast first, clamp after: clamping the floats would let a NaN through to the cast.
        idx = x_cat.long()
        if self.shared_table:
            idx = idx + self.low
        return torch.clamp(idx, min=self.low, max=self.high)


def embedding_dim(cardinality: int, max_dim: int = 16) -> int:
    """Width of one categorical embedding: ``min(max_dim, (cardinality + 1) // 2)``."""
    return min(max_dim, (cardinality + 1) // 2)


class FlatEmbedder(nn.Module):
    """``[N, F]`` -> ``[N, n_num + sum(embedding dims)]``: numeric columns as they are, each
    categorical column through its own ``nn.Embedding`` of width ``embedding_dim(card)``."""

    def __init__(self, n_num: int, cardinalities: Sequence[int], max_emb_dim: int) -> None:
        super().__init__()
        if max_emb_dim < 1:
            raise ValueError(f"max_emb_dim must be >= 1, got {max_emb_dim}")
        self.n_num = n_num
        self.index = CategoryIndex(cardinalities, shared_table=False) if cardinalities else None
        self.embeddings = nn.ModuleList(nn.Embedding(c, embedding_dim(c, max_emb_dim)) for c in cardinalities)
        self.out_features = n_num + sum(e.embedding_dim for e in self.embeddings)

    def forward(self, x: Tensor) -> Tensor:
        parts = [x[:, :self.n_num]] if self.n_num else []
        if self.index is not None:
            idx = self.index(x[:, self.n_num:])
            parts += [emb(idx[:, j]) for j, emb in enumerate(self.embeddings)]
        return torch.cat(parts, dim=1)


@register_model("tab_mlp")
class TabMLP(nn.Module):
    """MLP over numeric columns concatenated with per-column categorical embeddings."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        cardinalities: Sequence[int] = (),
        hidden: Sequence[int] = (128, 64),
        dropout: float = 0.1,
        max_emb_dim: int = 16,
        batchnorm: bool = True,
    ) -> None:
        super().__init__()
        n_num, cards = _split_columns(input_shape, cardinalities)
        self.embed = FlatEmbedder(n_num, cards, max_emb_dim)
        self.net = nn.Sequential(*mlp_layers(self.embed.out_features, hidden, num_outputs, dropout, batchnorm))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.embed(x))


class _ResBlock(nn.Module):
    def __init__(self, width: int, hidden: int, dropout: float, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm1d(width) if norm == "batchnorm" else nn.LayerNorm(width),
            nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, width), nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


@register_model("res_mlp")
class ResMLP(nn.Module):
    """The ResNet baseline of Gorishniy et al. (2021): embeddings as in ``tab_mlp``, a linear stem,
    pre-norm residual blocks ``x + Drop(Lin(Drop(ReLU(Lin(Norm(x))))))``, then Norm -> ReLU -> Linear."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        cardinalities: Sequence[int] = (),
        width: int = 64,
        n_blocks: int = 2,
        hidden_factor: float = 2.0,
        dropout: float = 0.1,
        norm: str = "batchnorm",
        max_emb_dim: int = 16,
    ) -> None:
        super().__init__()
        n_num, cards = _split_columns(input_shape, cardinalities)
        if norm not in ("batchnorm", "layernorm"):
            raise ValueError(f"norm must be 'batchnorm' or 'layernorm', got {norm!r}")
        if width < 1 or n_blocks < 0 or hidden_factor <= 0:
            raise ValueError(f"need width >= 1, n_blocks >= 0, hidden_factor > 0; "
                             f"got {width}, {n_blocks}, {hidden_factor}")
        self.embed = FlatEmbedder(n_num, cards, max_emb_dim)
        hidden = max(1, int(width * hidden_factor))
        self.stem = nn.Linear(self.embed.out_features, width)
        self.blocks = nn.Sequential(*(_ResBlock(width, hidden, dropout, norm) for _ in range(n_blocks)))
        self.head = nn.Sequential(
            nn.BatchNorm1d(width) if norm == "batchnorm" else nn.LayerNorm(width), nn.ReLU(),
            nn.Linear(width, num_outputs),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(self.embed(x))))


class FeatureTokenizer(nn.Module):
    """``[N, F]`` -> ``[N, F, d]``: numeric ``x_i * W_i + b_i``; categorical ``E[idx] + b_j``, all
    columns sharing one embedding table (offset indices: one Gather for every column)."""

    def __init__(self, n_num: int, cardinalities: Sequence[int], d_token: int) -> None:
        super().__init__()
        self.n_num, n_cat = n_num, len(cardinalities)
        self.num_weight = nn.Parameter(torch.empty(n_num, d_token)) if n_num else None
        self.num_bias = nn.Parameter(torch.empty(n_num, d_token)) if n_num else None
        self.index = CategoryIndex(cardinalities, shared_table=True) if n_cat else None
        self.cat_table = nn.Embedding(sum(cardinalities), d_token) if n_cat else None
        self.cat_bias = nn.Parameter(torch.empty(n_cat, d_token)) if n_cat else None
        bound = 1 / math.sqrt(d_token)  # the paper's init for every tokenizer parameter
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if not x.is_floating_point():  # token ids would pass silently as numbers
            raise TypeError(f"expects float feature rows (a table's columns), got {x.dtype} inputs")
        tokens = []
        if self.n_num:
            tokens.append(x[:, :self.n_num, None] * self.num_weight + self.num_bias)
        if self.index is not None:
            tokens.append(self.cat_table(self.index(x[:, self.n_num:])) + self.cat_bias)
        return torch.cat(tokens, dim=1)


@register_model("ft_transformer")
class FTTransformer(nn.Module):
    """FT-Transformer (Gorishniy et al., 2021): feature tokenizer, a learnable [CLS] token,
    pre-norm transformer encoder layers, head LayerNorm -> ReLU -> Linear on the [CLS] token.

    Differences from the paper, for size and exportability: GELU feed-forward instead of ReGLU,
    one dropout rate for attention/FFN/residual, and the first layer keeps its attention pre-norm.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        cardinalities: Sequence[int] = (),
        d_token: int = 32,
        n_layers: int = 2,
        n_heads: int = 4,
        ffn_factor: float = 2.0,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        n_num, cards = _split_columns(input_shape, cardinalities)
        if d_token < 1 or n_heads < 1 or d_token % n_heads:
            raise ValueError(f"d_token ({d_token}) must be a positive multiple of n_heads ({n_heads})")
        if n_layers < 1 or ffn_factor <= 0:
            raise ValueError(f"need n_layers >= 1 and ffn_factor > 0, got {n_layers}, {ffn_factor}")
        self.tokenizer = FeatureTokenizer(n_num, cards, d_token)
        self.cls = nn.Parameter(torch.empty(1, 1, d_token).uniform_(-1 / math.sqrt(d_token), 1 / math.sqrt(d_token)))
        layer = nn.TransformerEncoderLayer(
            d_token, n_heads, dim_feedforward=max(1, int(d_token * ffn_factor)), dropout=dropout,
            activation="gelu", batch_first=True, norm_first=True,
        )
        # Nested tensors only pay off with padding masks, and they do not export.
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(d_token), nn.ReLU(), nn.Linear(d_token, num_outputs))

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.tokenizer(x)
        tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return self.head(self.encoder(tokens)[:, 0])
