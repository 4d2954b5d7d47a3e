"""Text families (fasttext, textcnn, lstm, gru, transformer): padding invariance, ONNX export with
dynamic batch and sequence axes, the repeated-RNN-export trap, and learnability on a tiny synthetic corpus."""

import pytest
import torch
import torch.nn.functional as F

from models.registry import ModelError, create_model

TEXT = ["fasttext", "textcnn", "lstm", "gru", "transformer"]
VOCAB = 50
# Variants that take different code paths: unidirectional, stacked bidirectional.
VARIANTS = [("lstm", {}), ("gru", {}), ("transformer", {}), ("lstm", {"bidirectional": False, "num_layers": 2}),
            ("gru", {"num_layers": 2}), ("transformer", {"n_layers": 1, "max_len": 8}),
            ("fasttext", {}), ("fasttext", {"ngrams": 1}), ("fasttext", {"ngrams": 4, "buckets": 7}),
            ("textcnn", {}), ("textcnn", {"kernel_sizes": [1, 5], "channels": 4})]
VARIANT_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for n, kw in VARIANTS]


@pytest.fixture(autouse=True)
def one_thread():
    """Small batches on a shared 2-core box run much faster without intra-op threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def token_rows(n, max_len, seed=0, vocab=VOCAB):
    """Right-padded ids (1..vocab-1) of lengths 1..max_len; the last row fills ``max_len``."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (n,), generator=g)
    lengths[-1] = max_len
    return torch.randint(1, vocab, (n, max_len), generator=g) * (torch.arange(max_len) < lengths[:, None])


def make(name, seed=0, **kwargs):
    torch.manual_seed(seed)
    return create_model(name, (16,), 3, data_args={"vocab_size": VOCAB}, **kwargs)


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=VARIANT_IDS)
def test_forward_backward(name, kwargs):
    net = make(name, **kwargs)
    x = token_rows(4, 9)
    out = net(x)
    assert out.shape == (4, 3) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert net.eval()(x[:1, :1]).shape == (1, 3)  # L = 1 works


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=VARIANT_IDS)
def test_padding_does_not_change_the_output(name, kwargs):
    """A text alone == the same text in a batch with a 5x longer one (many more trailing pads),
    in both directions of a bidirectional RNN; an all-padding row stays finite."""
    net = make(name, **kwargs).eval()
    text = torch.tensor([[7, 3, 12, 44, 5, 9]])
    batch = torch.zeros(3, 30, dtype=torch.long)
    batch[0, :6] = text[0]
    batch[1] = token_rows(1, 30, seed=1)[0]  # row 2 stays all padding
    with torch.no_grad():
        alone, together = net(text), net(batch)
    torch.testing.assert_close(together[:1], alone, atol=1e-5, rtol=0)
    assert torch.isfinite(together).all()


@pytest.mark.parametrize("name", TEXT)
def test_out_of_range_ids_read_as_unknown(name):
    net = make(name).eval()
    x = torch.tensor([[4, VOCAB + 7, 9, -3, 0, 0]])
    unk = torch.tensor([[4, 1, 9, 1, 0, 0]])
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(unk))


def test_kwarg_errors_name_the_params_key():
    with pytest.raises(ModelError, match=r"model\.kwargs\.vocab_size: set from the data"):
        create_model("lstm", (16,), 2, vocab_size=10)
    with pytest.raises(ModelError, match=r"model\.kwargs\.d_token: .* takes no such argument"):
        create_model("transformer", (16,), 2, data_args={"vocab_size": 10}, d_token=8)
    with pytest.raises(ModelError, match=r"sequence models need token-id inputs \(max_len,\)"):
        create_model("gru", (1, 8, 8), 2, data_args={"vocab_size": 10})
    with pytest.raises(ModelError, match=r"d_model \(30\) must be a positive multiple of n_heads \(4\)"):
        create_model("transformer", (16,), 2, data_args={"vocab_size": 10}, d_model=30)


def test_transformer_position_table_covers_the_data_max_len():
    assert make("transformer", max_len=8).positions.num_embeddings == 16  # input_shape (16,) wins
    assert make("transformer", max_len=64).positions.num_embeddings == 64
    net = make("transformer", max_len=8).eval()  # texts past the table still run
    assert torch.isfinite(net(token_rows(2, 40))).all()


def export_and_check_parity(net, path, seq_lens=(5, 23), batch_sizes=(1, 4)):
    """Export with dynamic batch + sequence axes; ORT == torch at every (L, batch size)."""
    from pipelines.deploy import parity_check
    from pipelines.export import export_onnx, token_example
    from serving.runtime import make_session

    net = net.eval()
    info = export_onnx(net, [16], path, example=token_example(4, 7, VOCAB), dynamic_axes={0: "batch", 1: "seq"})
    assert info["input_shape"] == ["batch", "seq"]
    session = make_session(path)
    assert session.get_inputs()[0].type == "tensor(int64)"
    reports = {}
    for L in seq_lens:
        X = token_rows(9, L, seed=L)
        X[0] = 0  # one all-padding row
        with torch.no_grad():
            reference = net(X).numpy()
        report = parity_check(session, reference, lambda s: {"input": X[s].numpy()}, batch_sizes, atol=1e-4)
        assert report["passed"], (L, report)
        reports[L] = report["max_abs_diff"]
    return reports


@pytest.mark.parametrize("name", TEXT)
def test_onnx_export_with_dynamic_batch_and_sequence_axes(name, tmp_path):
    export_and_check_parity(make(name), tmp_path / f"{name}.onnx")


def test_repeated_rnn_exports_keep_the_sequence_axis_dynamic(tmp_path):
    """A second dynamo export of an LSTM/GRU in one process used to freeze the sequence axis through
    the exporter's stale dispatch cache (export_onnx clears it)."""
    for i, (name, kwargs) in enumerate([("lstm", {}), ("lstm", {"bidirectional": False}), ("gru", {})]):
        net = make(name, seed=i, **kwargs)
        export_and_check_parity(net, tmp_path / f"{i}.onnx", seq_lens=(3, 23), batch_sizes=(4,))


def test_export_refuses_a_sequence_axis_of_one(tmp_path):
    from pipelines.export import export_onnx

    with pytest.raises(ValueError, match=r"axis 1 \('seq'\) has size 1: an example size of 1 freezes the axis"):
        export_onnx(make("gru"), [16], tmp_path / "m.onnx", example=torch.ones(4, 1, dtype=torch.long),
                    dynamic_axes={0: "batch", 1: "seq"})


def cue_corpus(n, vocab=40, max_len=20, seed=0):
    """Class 1 iff the text holds a 'positive' token (2..4), class 0 iff a 'negative' one (5..7),
    one cue at a random place among filler tokens; lengths 3..20."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, max_len + 1, (n,), generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randint(8, vocab, (n, max_len), generator=g)
    cue = torch.where(y == 1, torch.randint(2, 5, (n,), generator=g), torch.randint(5, 8, (n,), generator=g))
    x[torch.arange(n), (torch.rand(n, generator=g) * lengths).long()] = cue
    return x * (torch.arange(max_len) < lengths[:, None]), y


@pytest.mark.parametrize("name,lr", [("lstm", 1e-2), ("transformer", 3e-3), ("fasttext", 1e-2), ("textcnn", 3e-3)])
def test_learns_which_tokens_appear(name, lr):
    x, y = cue_corpus(600)
    torch.manual_seed(0)
    net = create_model(name, (20,), 2, data_args={"vocab_size": 40})
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(6):
        net.train()
        for batch in torch.randperm(400).split(32):
            loss = F.cross_entropy(net(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        accuracy = (net.eval()(x[400:]).argmax(1) == y[400:]).float().mean().item()
    assert accuracy >= 0.9, f"{name} reached only {accuracy:.2f} held-out accuracy"


# ---- fasttext: n-grams hashed inside the network ------------------------------------------------


def test_fasttext_ngrams_see_word_order_and_unigrams_do_not():
    text, swapped = torch.tensor([[5, 9, 12, 3]]), torch.tensor([[12, 3, 5, 9]])
    with torch.no_grad():
        bag = make("fasttext", ngrams=1).eval()
        torch.testing.assert_close(bag(text), bag(swapped))
        grams = make("fasttext").eval()
        assert (grams(text) - grams(swapped)).abs().max() > 1e-4


def test_fasttext_hash_stays_in_range_for_large_ids(tmp_path):
    """Ids near the top of a 20,000-token vocabulary and a prime bucket count: the int64 rolling hash
    (h * 1000003 + id) stays in [0, buckets), and ONNX Runtime's Mod agrees with torch's remainder."""
    from models.sequence import HASH_MUL

    net = create_model("fasttext", (16,), 2, data_args={"vocab_size": 20_000}, buckets=100_003).eval()
    x = torch.full((3, 40), 19_999)
    h = x[:, :-1] * HASH_MUL + x[:, 1:]
    assert int(h.max()) < 2**62 and int(torch.remainder(h, 100_003).max()) < 100_003
    export_and_check_parity(net, tmp_path / "big.onnx", seq_lens=(2, 3, 257), batch_sizes=(1, 3))
    with pytest.raises(ModelError, match=r"buckets \(\d+\) too large for an int64 n-gram hash"):
        create_model("fasttext", (16,), 2, data_args={"vocab_size": 10}, buckets=2**62)


# ---- the service's unknown-token report (pure function, no server) ------------------------------


@pytest.mark.parametrize("level", ["char", "word"])
def test_mostly_unknown_texts_are_flagged(level):
    from pipelines.modalities.text.corpus import fit_tokenizer
    from pipelines.modalities.text.encode import UNK_ID, encode
    from pipelines.modalities.text.serve import unknown_notes
    from pipelines.params import parse_params

    corpus = ["这部电影太好看了 great movie", "太差了 bad movie"] * 3
    tok = fit_tokenizer(corpus, parse_params({}).text, level)
    ids, lengths, _ = encode(tok, ["😀😀", "这部电影太好看了", "great movie 😀", " "], 16)
    ids[lengths == 0, 0] = UNK_ID  # as the service reads a text without tokens
    shares, notes = unknown_notes(ids, lengths)
    assert shares[0] == 1.0 and "mostly unknown to the model" in notes[0]
    assert shares[1] == 0.0 and notes[1] is None
    assert 0 < shares[2] < 0.5 and notes[2] is None
    assert shares[3] == 1.0 and notes[3].startswith("no tokens:")
