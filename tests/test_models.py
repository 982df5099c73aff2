"""Models (language model, Seq2Seq with Luong attention, vector-to-sequence), the
attention modules and the data sets. Float64 where outputs are compared."""
import datetime
import os

import pytest
import torch
import torch.nn.functional as F

import rnnkernels as rk
from rnnkernels.check import relative_error
from rnnkernels.data import (FORMATS, DataError, Vocab, dates_splits, load_lm, load_pairs, pad_sources,
                             pad_targets)
from rnnkernels.data.dates import date_pools
from rnnkernels.models import BOS, EOS, PAD, RNNLanguageModel, Seq2Seq, VectorToSequence
from rnnkernels.nn import Attention, DotProductAttention

F64 = 1e-10


def _seq2seq(attention="general", cell="lstm", layers=2, seed=0):
    torch.manual_seed(seed)
    return Seq2Seq(17, 13, embed_size=6, hidden_size=10, num_layers=layers, cell=cell, attention=attention).double().eval()


def _batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([7, 3, 1, 5])
    src = torch.randint(4, 17, (4, 7), generator=g).masked_fill(torch.arange(7)[None] >= lengths[:, None], PAD)
    tgt_in = torch.randint(4, 13, (4, 6), generator=g)
    tgt_in[:, 0] = BOS
    return src, lengths, tgt_in


# ----------------------------------------------------------------------------- attention modules


@pytest.mark.parametrize("score", ["dot", "general"])
def test_luong_attention_matches_formula(score):
    torch.manual_seed(0)
    memory_size = 5 if score == "dot" else 7
    layer = Attention(5, memory_size, score=score).double()
    query, memory = torch.randn(3, 4, 5, dtype=torch.float64), torch.randn(3, 6, memory_size, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 4])
    out, weights = layer(query, memory, lengths, return_weights=True)

    keys = memory if score == "dot" else memory @ layer.key_proj.weight.T
    scores = (query @ keys.transpose(1, 2)).masked_fill(torch.arange(6)[None, None] >= lengths[:, None, None], -1e300)
    expected_weights = torch.softmax(scores, -1)
    expected = torch.tanh(torch.cat([expected_weights @ memory, query], -1) @ layer.combine.weight.T)
    assert relative_error(weights, expected_weights) < F64
    assert relative_error(out, expected) < F64
    assert float(weights[1, :, 2:].detach().abs().max()) == 0.0
    # one decoding step (B, D) gives the same as the first row of the batched call
    step_out, step_weights = layer(query[:, 0], memory, lengths, return_weights=True)
    assert relative_error(step_out, out[:, 0]) < F64 and relative_error(step_weights, weights[:, 0]) < F64


def test_attention_bad_arguments():
    with pytest.raises(ValueError, match="score"):
        Attention(4, score="additive")
    with pytest.raises(ValueError, match="memory_size == query_size"):
        Attention(4, 6, score="dot")
    with pytest.raises(ValueError, match="memory must be"):
        Attention(4, 6)(torch.randn(2, 3, 4), torch.randn(2, 5, 5))


def test_dot_product_attention_module_is_the_function():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 6, 5), torch.randn(2, 3, 6, 2)
    lengths = torch.tensor([6, 3])
    module = DotProductAttention(scale=0.3, causal=True)
    ctx, w = module(q, k, v, lengths, return_weights=True)
    ctx_f, w_f = rk.dot_product_attention(q, k, v, lengths, causal=True, scale=0.3, return_weights=True)
    assert torch.equal(ctx, ctx_f) and torch.equal(w, w_f)


# ----------------------------------------------------------------------------- language model


def test_lm_log_prob_is_sum_of_next_token_conditionals():
    torch.manual_seed(0)
    model = RNNLanguageModel(23, 8, 8, num_layers=2, cell="gru", tie_weights=True).double().eval()
    assert model.output.weight is model.embedding.weight
    tokens = torch.randint(0, 23, (3, 9))
    lengths = torch.tensor([9, 4, 2])
    logits, _ = model(tokens)
    assert logits.shape == (3, 9, 23)
    got = model.log_prob(tokens, lengths)
    for b in range(3):  # one token at a time, state carried: an independent computation
        total, state = 0.0, None
        for t in range(int(lengths[b]) - 1):
            step_logits, state = model(tokens[b : b + 1, t : t + 1], state)
            total += F.log_softmax(step_logits[0, 0], -1)[tokens[b, t + 1]].item()
        assert abs(got[b].item() - total) <= F64 * max(1.0, abs(total))
    assert relative_error(model.log_prob(tokens[1, :4]), got[1]) < F64


def test_lm_perplexity_is_exp_mean_loss():
    torch.manual_seed(0)
    model = RNNLanguageModel(11, 6, 6, num_layers=1).double()
    stream = torch.randint(0, 11, (2 * 20 + 1,))
    ppl = model.perplexity(stream, batch_size=2, bptt=7)  # 20 columns, read 7 at a time with state carried
    logits, _ = model(stream[:40].view(2, 20))
    loss = F.cross_entropy(logits.flatten(0, 1), stream[1:41].view(2, 20).reshape(-1))
    assert abs(ppl - loss.exp().item()) < 1e-9 * ppl


def test_lm_generate_is_seeded_and_top_k_1_is_greedy():
    torch.manual_seed(0)
    model = RNNLanguageModel(31, 8, 16, num_layers=2)
    sample = lambda seed, **kw: model.generate([4, 5], 20, generator=torch.Generator().manual_seed(seed), **kw)  # noqa
    assert sample(3, temperature=1.0) == sample(3, temperature=1.0)
    assert sample(3, temperature=1.0) != sample(4, temperature=1.0)
    assert sample(3, temperature=1.0, top_k=1) == sample(9, temperature=0.0)
    assert all(0 <= t < 31 for t in sample(5, top_k=4))
    with pytest.raises(ValueError, match="prompt"):
        model.generate([], 3)


def test_lm_tie_needs_equal_sizes():
    with pytest.raises(ValueError, match="tie_weights"):
        RNNLanguageModel(10, 8, 16, tie_weights=True)


# ----------------------------------------------------------------------------- seq2seq


@pytest.mark.parametrize("attention,cell", [("general", "lstm"), ("dot", "gru"), (None, "rnn")])
def test_teacher_forcing_all_at_once_equals_step_loop(attention, cell):
    model = _seq2seq(attention, cell)
    src, lengths, tgt_in = _batch()
    full, full_weights = model(src, lengths, tgt_in, return_weights=True)
    assert full.shape == (4, 6, 13)
    # ratio just below 1: the step loop runs, and with this seed every draw picks the true token
    loop, loop_weights = model(src, lengths, tgt_in, teacher_forcing_ratio=1 - 1e-9,
                               generator=torch.Generator().manual_seed(0), return_weights=True)
    assert relative_error(loop, full) < F64
    if attention is not None:
        assert full_weights.shape == (4, 6, 7)
        assert relative_error(loop_weights, full_weights) < F64
    free = model(src, lengths, tgt_in, teacher_forcing_ratio=0.0)  # feeds its own predictions
    assert relative_error(free[:, 0], full[:, 0]) < F64  # the first step reads BOS either way
    assert relative_error(free, full) > 1e-3
    with pytest.raises(ValueError, match="teacher_forcing_ratio"):
        model(src, lengths, tgt_in, teacher_forcing_ratio=1.5)


def test_padding_does_not_leak_into_outputs():
    model = _seq2seq()
    src, lengths, tgt_in = _batch()
    full = model(src, lengths, tgt_in)
    for b in range(4):
        alone = model(src[b : b + 1, : int(lengths[b])], lengths[b : b + 1], tgt_in[b : b + 1])
        assert relative_error(alone, full[b : b + 1]) < F64


def _teacher_forced_log_prob(model, src, lengths, hyp):
    """Sum of log p of each hypothesis's tokens (through EOS) under teacher forcing, and its attention weights."""
    tgt_in = torch.cat([torch.full((src.shape[0], 1), BOS), hyp.tokens[:, :-1]], 1)
    logits, weights = model(src, lengths, tgt_in, return_weights=True)
    per_token = F.log_softmax(logits, -1).gather(2, hyp.tokens[..., None])[..., 0]
    alive = torch.arange(hyp.tokens.shape[1])[None] < hyp.lengths[:, None]
    return (per_token * alive).sum(1), weights * alive[..., None]


def test_greedy_and_beam_search_are_consistent():
    model = _seq2seq()
    src, lengths, _ = _batch()
    greedy = model.greedy_decode(src, lengths, max_len=9)
    beam1 = model.beam_search(src, lengths, beam_size=1, max_len=9)
    assert torch.equal(greedy.tokens, beam1.tokens) and torch.equal(greedy.lengths, beam1.lengths)
    assert relative_error(beam1.log_probs, greedy.log_probs) < F64
    assert relative_error(beam1.alignments, greedy.alignments) < F64
    for hyp in (greedy, model.beam_search(src, lengths, beam_size=4, max_len=9, length_penalty=0.7)):
        expected, weights = _teacher_forced_log_prob(model, src, lengths, hyp)
        assert relative_error(hyp.log_probs, expected) < F64
        assert relative_error(hyp.scores, hyp.log_probs / hyp.lengths.double() ** (0.7 if hyp is not greedy else 1.0)) < 1e-6
        assert relative_error(hyp.alignments, weights) < F64
        assert not ((hyp.tokens == PAD) & (torch.arange(hyp.tokens.shape[1])[None] < hyp.lengths[:, None])).any()
        assert float(hyp.alignments[1, :, 3:].abs().max()) == 0.0  # source 1 has 3 tokens


def test_beam_search_finds_a_better_normalised_score_than_greedy_somewhere():
    """Beam search ranks by log p / length; over many inputs it must beat greedy at least once and never
    return a hypothesis that is worse than its own first beam (greedy is not always in the beam)."""
    model = _seq2seq(layers=1, seed=3)
    g = torch.Generator().manual_seed(5)
    src = torch.randint(4, 17, (32, 6), generator=g)
    lengths = torch.full((32,), 6)
    greedy = model.greedy_decode(src, lengths, max_len=8)
    beam = model.beam_search(src, lengths, beam_size=6, max_len=8)
    assert (beam.scores > greedy.scores + 1e-9).any()


def test_batched_beam_search_equals_one_at_a_time():
    model = _seq2seq()
    src, lengths, _ = _batch()
    beam = model.beam_search(src, lengths, beam_size=3, max_len=8)
    for b in range(4):
        alone = model.beam_search(src[b : b + 1, : int(lengths[b])], lengths[b : b + 1], beam_size=3, max_len=8)
        n = int(alone.lengths[0])
        assert torch.equal(alone.tokens[0, :n], beam.tokens[b, :n]) and int(beam.lengths[b]) == n
        assert relative_error(alone.log_probs, beam.log_probs[b : b + 1]) < 1e-6


def test_vector_to_sequence():
    torch.manual_seed(0)
    model = VectorToSequence(12, 9, embed_size=5, hidden_size=8, num_layers=2, cell="lstm").double().eval()
    features = torch.randn(3, 12, dtype=torch.float64)
    tgt_in = torch.randint(4, 9, (3, 5))
    tgt_in[:, 0] = BOS
    logits = model(features, tgt_in)
    assert logits.shape == (3, 5, 9)
    loop = model(features, tgt_in, teacher_forcing_ratio=1 - 1e-9, generator=torch.Generator().manual_seed(0))
    assert relative_error(loop, logits) < F64
    h0, c0 = model.initial_state(features)
    assert h0.shape == c0.shape == (2, 3, 8)
    other = model(torch.randn_like(features), tgt_in)  # the features set the state: other features, other outputs
    assert relative_error(other, logits) > 1e-3
    greedy, beam1 = model.greedy_decode(features, max_len=6), model.beam_search(features, beam_size=1, max_len=6)
    assert torch.equal(greedy.tokens, beam1.tokens) and greedy.alignments is None
    assert relative_error(beam1.log_probs, greedy.log_probs) < F64


# ----------------------------------------------------------------------------- data


def test_dates_are_deterministic_valid_and_held_out():
    a, b, c = dates_splits(7, train_size=300), dates_splits(7, train_size=300), dates_splits(8, train_size=300)
    assert a == b and a != c
    for split in ("train", "valid", "test"):
        for source, target in a[split]:
            day = datetime.date.fromisoformat(target)  # raises unless YYYY-MM-DD
            assert target == day.isoformat() and len(target) == 10
            assert source in {fmt(day) for fmt in FORMATS.values()}, (source, target)
    assert len(a["test"]) == 1000 and len({t for _, t in a["test"]}) == 1000  # distinct held-out days
    pools = date_pools(7)
    assert not set(pools["train"]) & set(pools["test"]) and not set(pools["train"]) & set(pools["valid"])
    train_days = {t for _, t in a["train"]}
    assert not train_days & {t for _, t in a["test"]}


def test_date_formats_render_known_dates():
    d = datetime.date(2026, 11, 25)
    rendered = {fmt(d) for fmt in FORMATS.values()}
    for text in ("25 Nov 2026", "11/25/26", "Wednesday, November 25, 2026", "25.11.2026", "2026/11/25",
                 "20261125", "the 25th of November, 2026", "November 25th, 2026", "25-NOV-26", "Wed 25 Nov 2026"):
        assert text in rendered
    assert "the 3rd of July, 1999" in {fmt(datetime.date(1999, 7, 3)) for fmt in FORMATS.values()}
    assert "the 11th of July, 1999" in {fmt(datetime.date(1999, 7, 11)) for fmt in FORMATS.values()}


def test_date_sources_are_unambiguous():
    days = [datetime.date(1950, 1, 1) + datetime.timedelta(n) for n in range(0, 36524, 3)]
    seen = {}
    for day in days:
        for fmt in FORMATS.values():
            assert seen.setdefault(fmt(day), day) == day


def test_python_stdlib_corpus_split_is_deterministic():
    a, b = load_lm("builtin:python-stdlib", max_chars=20_000), load_lm("builtin:python-stdlib", max_chars=20_000)
    assert a.level == "char" and a.vocab == b.vocab
    for split in ("train", "valid", "test"):
        assert torch.equal(getattr(a, split), getattr(b, split)) and getattr(a, split).numel() == 20_000
    text = "".join(a.vocab.itos[i] for i in a.train[:2000].tolist())
    assert "def " in text or "import " in text


def test_file_loaders(tmp_path):
    folder = tmp_path / "wiki"
    folder.mkdir()
    for split, text in (("train", "the cat sat\nthe dog ran\n"), ("valid", "the cat ran\n"), ("test", "a bird\n")):
        (folder / f"{split}.txt").write_text(text)
    data = load_lm(str(folder))
    assert data.level == "word"
    assert [data.vocab.itos[i] for i in data.valid.tolist()] == ["the", "cat", "ran", "<eos>"]
    assert [data.vocab.itos[i] for i in data.test.tolist()] == ["<unk>", "<unk>", "<eos>"]

    text_file = tmp_path / "book.txt"
    text_file.write_text("abcdefghij" * 10)
    chars = load_lm(str(text_file))
    assert chars.level == "char" and (chars.train.numel(), chars.valid.numel(), chars.test.numel()) == (90, 5, 5)

    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"src {i}\ttgt {i}\n" for i in range(40)))
    pairs = load_pairs(str(tsv), level="word")
    assert (len(pairs.train), len(pairs.valid), len(pairs.test)) == (36, 2, 2)
    assert load_pairs(str(tsv), level="word") == pairs
    src, tgt = pairs.train[0]
    assert pairs.src_vocab.decode(src)[0] == "src" and pairs.tgt_vocab.decode(tgt)[0] == "tgt"


def test_loader_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_lm(str(tmp_path / "missing" / "x.txt"))
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match="empty"):
        load_lm(str(tmp_path / "empty.txt"))
    (tmp_path / "bad.tsv").write_text("a\tb\nc d\ne\tf\n")
    with pytest.raises(DataError, match="line 2: no tab"):
        load_pairs(str(tmp_path / "bad.tsv"))
    with pytest.raises(DataError, match="unknown built-in"):
        load_pairs("builtin:nope")
    os.mkdir(tmp_path / "nofiles")
    with pytest.raises(DataError, match="train.txt does not exist"):
        load_lm(str(tmp_path / "nofiles"))


def test_padding_helpers_and_vocab():
    src, lengths = pad_sources([[5, 6, 7], [8]])
    assert src.tolist() == [[5, 6, 7], [8, PAD, PAD]] and lengths.tolist() == [3, 1]
    tgt_in, tgt_out = pad_targets([[4, 5], [6]])
    assert tgt_in.tolist() == [[BOS, 4, 5], [BOS, 6, PAD]]
    assert tgt_out.tolist() == [[4, 5, EOS], [6, EOS, PAD]]
    vocab = Vocab.build([list("abca")])
    assert vocab.decode(vocab.encode(list("cab")) + [EOS] + vocab.encode(list("a"))) == list("cab")
    assert vocab.encode(["z"]) == [1]
