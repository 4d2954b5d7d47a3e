"""Text classifiers over token ids: ``fasttext`` (pooled token + hashed n-gram embeddings),
``textcnn`` (Kim 2014), ``lstm``, ``gru`` and a small ``transformer`` encoder.

Input contract with the tokenizing step: ONE int64 tensor ``[N, L]`` of token ids, right-padded,
``0 = <pad>``, ``1 = <unk>``, ``L`` free (any ``L >= 1``; ``input_shape = (max_len,)`` is only
informational). ``lengths = (x != 0).sum(1)``; a row of padding only is treated as one <pad> token.
Ids outside ``[0, vocab_size)`` are read as <unk> instead of crashing the embedding Gather.

Padding invariance: a text gives the same logits whatever number of pads follows it. No
``pack_padded_sequence`` (it does not export with the dynamo exporter): pad embeddings are zeroed,
the forward direction is read at the last valid step, the backward direction runs over each row
reversed within its own length, the transformer masks padded keys and pools only valid tokens,
fasttext counts an n-gram only when its last token is real, and textcnn pools only the windows that
start on a real token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.registry import register_model

PAD, UNK = 0, 1


def _check_contract(input_shape: Sequence[int], vocab_size: int) -> int:
    """Validate the input contract; return the informational ``max_len``."""
    if len(input_shape) != 1 or input_shape[0] < 1:
        raise ValueError(f"sequence models need token-id inputs (max_len,), got input shape {tuple(input_shape)}")
    if vocab_size < 2:
        raise ValueError(f"vocab_size counts <pad> and <unk>, so is >= 2; got {vocab_size}")
    return int(input_shape[0])


def token_ids(x: Tensor, vocab_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """``[N, L]`` ids -> (ids with out-of-range values as <unk>, bool mask of real tokens, lengths)."""
    mask = x != PAD
    ids = torch.where((x < 0) | (x >= vocab_size), torch.full_like(x, UNK), x)
    return ids, mask, mask.sum(1)


def reverse_within_length(h: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each row's first ``lengths[i]`` steps, leaving its padding where it is (an involution)."""
    pos = torch.arange(h.shape[1], device=h.device)[None, :]
    last = lengths[:, None] - 1
    idx = torch.where(pos <= last, last - pos, pos)
    return h.gather(1, idx[:, :, None].expand(-1, -1, h.shape[2]))


def step_at(h: Tensor, index: Tensor) -> Tensor:
    """``h[i, index[i]]`` for every row: ``[N, L, D]`` -> ``[N, D]``."""
    return h.gather(1, index[:, None, None].expand(-1, 1, h.shape[2])).squeeze(1)


class MaskedRNN(nn.Module):
    """Stacked (bi)directional LSTM/GRU over right-padded batches, one layer at a time so that each
    layer's backward direction sees its row reversed within its length. Returns the final states
    ``[N, D * hidden]``: forward read at step ``length - 1``, backward at step 0."""

    def __init__(self, cell: type[nn.RNNBase], input_size: int, hidden_size: int, num_layers: int,
                 bidirectional: bool, dropout: float) -> None:
        super().__init__()
        width = 2 * hidden_size if bidirectional else hidden_size
        sizes = [input_size] + [width] * (num_layers - 1)
        self.fwd = nn.ModuleList(cell(s, hidden_size, batch_first=True) for s in sizes)
        self.bwd = nn.ModuleList(cell(s, hidden_size, batch_first=True) for s in sizes) if bidirectional else None
        self.dropout = nn.Dropout(dropout)
        self.out_features = width

    def forward(self, h: Tensor, mask: Tensor, lengths: Tensor) -> Tensor:
        for i, fwd in enumerate(self.fwd):
            if i:
                h = self.dropout(h)
            out = fwd(h)[0]
            if self.bwd is not None:
                back = reverse_within_length(self.bwd[i](reverse_within_length(h, lengths))[0], lengths)
                out = torch.cat([out, back], dim=2)
            # Steps past the length hold states that read padding: zero them so nothing downstream can.
            h = out * mask[:, :, None]
        last = step_at(h, lengths - 1)
        if self.bwd is None:
            return last
        hidden = self.out_features // 2
        return torch.cat([last[:, :hidden], h[:, 0, hidden:]], dim=1)


class _RNNClassifier(nn.Module):
    cell: type[nn.RNNBase]

    def __init__(self, input_shape: Sequence[int], num_outputs: int, vocab_size: int, embed_dim: int,
                 hidden_size: int, num_layers: int, bidirectional: bool, dropout: float) -> None:
        super().__init__()
        _check_contract(input_shape, vocab_size)
        if embed_dim < 1 or hidden_size < 1 or num_layers < 1:
            raise ValueError(f"need embed_dim, hidden_size, num_layers >= 1; "
                             f"got {embed_dim}, {hidden_size}, {num_layers}")
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD)
        self.rnn = MaskedRNN(self.cell, embed_dim, hidden_size, num_layers, bidirectional, dropout)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.rnn.out_features, num_outputs))

    def forward(self, x: Tensor) -> Tensor:
        ids, mask, lengths = token_ids(x, self.vocab_size)
        h = self.embed(ids) * mask[:, :, None]
        return self.head(self.rnn(h, mask, lengths.clamp(min=1)))


@register_model("lstm")
class LSTMClassifier(_RNNClassifier):
    """Embedding -> (bi)LSTM -> final states -> Linear."""

    cell = nn.LSTM

    def __init__(self, input_shape: Sequence[int], num_outputs: int, vocab_size: int, embed_dim: int = 64,
                 hidden_size: int = 64, num_layers: int = 1, bidirectional: bool = True, dropout: float = 0.1) -> None:
        super().__init__(input_shape, num_outputs, vocab_size, embed_dim, hidden_size, num_layers,
                         bidirectional, dropout)


@register_model("gru")
class GRUClassifier(_RNNClassifier):
    """Embedding -> (bi)GRU -> final states -> Linear."""

    cell = nn.GRU

    def __init__(self, input_shape: Sequence[int], num_outputs: int, vocab_size: int, embed_dim: int = 64,
                 hidden_size: int = 64, num_layers: int = 1, bidirectional: bool = True, dropout: float = 0.1) -> None:
        super().__init__(input_shape, num_outputs, vocab_size, embed_dim, hidden_size, num_layers,
                         bidirectional, dropout)


@register_model("transformer")
class TextTransformer(nn.Module):
    """Token + learned positional embeddings, pre-norm encoder layers with a key-padding mask,
    mean over the real tokens, Linear. Positions past the table reuse its last row, so any ``L``
    runs (and exports) without a shape guard."""

    def __init__(self, input_shape: Sequence[int], num_outputs: int, vocab_size: int, d_model: int = 64,
                 n_heads: int = 4, n_layers: int = 2, ffn_dim: int = 128, dropout: float = 0.1,
                 max_len: int = 256) -> None:
        super().__init__()
        data_max_len = _check_contract(input_shape, vocab_size)
        if d_model < 1 or n_heads < 1 or d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be a positive multiple of n_heads ({n_heads})")
        if n_layers < 1 or ffn_dim < 1 or max_len < 1:
            raise ValueError(f"need n_layers, ffn_dim, max_len >= 1; got {n_layers}, {ffn_dim}, {max_len}")
        self.vocab_size = vocab_size
        self.tokens = nn.Embedding(vocab_size, d_model, padding_idx=PAD)
        self.positions = nn.Embedding(max(max_len, data_max_len), d_model)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, dim_feedforward=ffn_dim, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        # Nested tensors would skip padded steps, but they do not export.
        self.encoder = nn.TransformerEncoder(layer, n_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(d_model, num_outputs))

    def forward(self, x: Tensor) -> Tensor:
        ids, mask, lengths = token_ids(x, self.vocab_size)
        pos = torch.arange(x.shape[1], device=x.device)[None, :]
        # A row of padding only keeps its first step visible: an all-masked softmax is NaN.
        keep = mask | ((pos == 0) & (lengths == 0)[:, None])
        h = self.tokens(ids) + self.positions(pos.clamp(max=self.positions.num_embeddings - 1))
        h = self.encoder(h * keep[:, :, None], src_key_padding_mask=~keep)
        pooled = (h * keep[:, :, None]).sum(1) / keep.sum(1, keepdim=True)
        return self.head(pooled)


# Multiplier of the rolling n-gram hash: prime, and small enough that ``(buckets - 1) * HASH_MUL +
# vocab_size`` stays far inside int64 for any buckets/vocabulary a text model has (< 2**62).
HASH_MUL = 1_000_003
# Embedding init scale: the mean of many N(0, 1) rows that training barely touches (rare hashed
# n-grams) drowns the few informative ones; 0.1 gave a lower val loss than 1.0 on Chinese reviews.
FASTTEXT_INIT_STD = 0.1


@register_model("fasttext")
class FastText(nn.Module):
    """fastText-style bag of tricks (Joulin et al. 2017): the mean of token embeddings and of hashed
    2..``ngrams``-gram embeddings over the real tokens, dropout, Linear.

    The n-grams are hashed inside the network from the token ids (rolling hash
    ``h = (h * HASH_MUL + next_id) mod buckets``, int64 throughout), so the tokenizer, the service and
    the exported graph's input stay those of every other sequence model. With character tokens
    (Chinese) the n-grams are character 2-/3-grams, i.e. most words; with word tokens, word bigrams.
    """

    def __init__(self, input_shape: Sequence[int], num_outputs: int, vocab_size: int, embed_dim: int = 64,
                 ngrams: int = 3, buckets: int = 100_003, dropout: float = 0.3) -> None:
        super().__init__()
        _check_contract(input_shape, vocab_size)
        if embed_dim < 1 or ngrams < 1 or buckets < 1:
            raise ValueError(f"need embed_dim, ngrams, buckets >= 1; got {embed_dim}, {ngrams}, {buckets}")
        if (buckets - 1) * HASH_MUL + vocab_size >= 2**62:
            raise ValueError(f"buckets ({buckets}) too large for an int64 n-gram hash")
        self.vocab_size, self.ngrams, self.buckets = vocab_size, ngrams, buckets
        self.tokens = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD)
        self.grams = nn.Embedding(buckets, embed_dim) if ngrams > 1 else None
        for table in (self.tokens, self.grams):
            if table is not None:
                nn.init.normal_(table.weight, 0.0, FASTTEXT_INIT_STD)
        with torch.no_grad():
            self.tokens.weight[PAD].zero_()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(embed_dim, num_outputs)

    def forward(self, x: Tensor) -> Tensor:
        ids, mask, lengths = token_ids(x, self.vocab_size)
        total = (self.tokens(ids) * mask[:, :, None]).sum(1)
        count = lengths.to(total.dtype)
        h = ids
        for k in range(2, self.ngrams + 1):
            if self.grams is None:
                break
            # h[:, i] hashes ids[i : i + k]; right padding means it is real iff its last token is
            h = torch.remainder(h[:, :-1] * HASH_MUL + ids[:, k - 1:], self.buckets)
            real = mask[:, k - 1:]
            total = total + (self.grams(h) * real[:, :, None]).sum(1)
            count = count + real.sum(1).to(total.dtype)
        # a row of padding only: zero features, so the head's bias alone (finite)
        return self.head(self.dropout(total / count.clamp(min=1.0)[:, None]))


@register_model("textcnn")
class TextCNN(nn.Module):
    """Kim (2014): token embeddings, one Conv1d + ReLU per kernel size, max over the windows that
    start on a real token, dropout, Linear.

    Every row is right-padded with ``k - 1`` zero embeddings before each convolution, so a text has
    one window per token whatever its length or the padding after it (padding invariance, and
    texts shorter than the widest kernel still run).
    """

    def __init__(self, input_shape: Sequence[int], num_outputs: int, vocab_size: int, embed_dim: int = 64,
                 kernel_sizes: Sequence[int] = (2, 3, 4), channels: int = 64, dropout: float = 0.5) -> None:
        super().__init__()
        _check_contract(input_shape, vocab_size)
        kernel_sizes = [int(k) for k in kernel_sizes]
        if embed_dim < 1 or channels < 1 or not kernel_sizes or min(kernel_sizes) < 1:
            raise ValueError(f"need embed_dim, channels >= 1 and kernel sizes >= 1; got {embed_dim}, {channels}, "
                             f"{kernel_sizes}")
        self.vocab_size, self.kernel_sizes = vocab_size, kernel_sizes
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD)
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, channels, k) for k in kernel_sizes)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels * len(kernel_sizes), num_outputs)

    def forward(self, x: Tensor) -> Tensor:
        ids, mask, lengths = token_ids(x, self.vocab_size)
        h = (self.embed(ids) * mask[:, :, None]).transpose(1, 2)  # [N, D, L]
        # windows starting on a real token (an all-padding row: its first window)
        starts = torch.arange(x.shape[1], device=x.device)[None, :] < lengths.clamp(min=1)[:, None]
        pooled = []
        for k, conv in zip(self.kernel_sizes, self.convs):
            c = torch.relu(conv(nn.functional.pad(h, (0, k - 1))))  # [N, C, L]
            pooled.append(c.masked_fill(~starts[:, None, :], 0.0).amax(2))  # exact: ReLU output is >= 0
        return self.head(self.dropout(torch.cat(pooled, 1)))
