"""Translation and generation with a loaded Checkpoint (what `translate` and `generate` print).

    ck = rnnkernels.app.load_checkpoint("runs/dates.pt")
    [t] = translate(ck, ["25 Nov 2026"], beam_size=5, n_best=2)
    t.best.text, t.best.score, t.hypotheses[1].text, t.best.alignment   # (output tokens + <eos>, source tokens)
"""
import math
from typing import List, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from ..data import Vocab, detokenize, pad_sources, tokenize
from ..models import BOS, EOS, PAD


class Hypothesis(NamedTuple):
    """One output: its text and tokens (without <eos>), summed log-probability, length-normalised
    score, whether it ended with <eos> (False: cut off at max_len), and the attention weights
    (output tokens, plus <eos> when finished; source tokens), or None without attention."""
    text: str
    tokens: List[str]
    log_prob: float
    score: float
    finished: bool
    alignment: Optional[Tensor]


class Translation(NamedTuple):
    """A source, its tokens, the ones the model never saw (read as <unk>), and its hypotheses, best
    first (none for a blank source)."""
    source: str
    source_tokens: List[str]
    unknown: List[str]
    hypotheses: List[Hypothesis]

    @property
    def best(self) -> Optional[Hypothesis]:
        return self.hypotheses[0] if self.hypotheses else None


def unknown_tokens(tokens: Sequence[str], vocab: Vocab) -> List[str]:
    """The distinct tokens of `tokens` that `vocab` lacks, in order of appearance."""
    return list(dict.fromkeys(t for t in tokens if t not in vocab.stoi))


def _require(checkpoint, kind: str) -> None:
    if checkpoint.kind != kind:
        raise ValueError(f"this needs a {kind} checkpoint; {checkpoint.path} holds a {checkpoint.kind} model")


@torch.no_grad()
def translate(checkpoint, texts: Sequence[str], beam_size: int = 5, n_best: int = 1, max_len: int = 100,
              length_penalty: float = 1.0, batch_size: int = 64) -> List[Translation]:
    """Beam search over `texts` in batches of batch_size; the n_best best hypotheses of each."""
    _require(checkpoint, "seq2seq")
    for name, value, low in (("beam_size", beam_size, 1), ("max_len", max_len, 1), ("batch_size", batch_size, 1)):
        if not (isinstance(value, int) and value >= low):
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not (isinstance(n_best, int) and 1 <= n_best <= beam_size):
        raise ValueError(f"n_best must be an integer in [1, beam_size = {beam_size}], got {n_best!r}")
    if not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty must be finite, got {length_penalty}")
    model, src_vocab, tgt_vocab = checkpoint.model, checkpoint.src_vocab, checkpoint.tgt_vocab
    device = next(model.parameters()).device
    sources = [tokenize(text, checkpoint.src_level) if text.strip() else [] for text in texts]
    results = [Translation(text, tokens, unknown_tokens(tokens, src_vocab), []) for text, tokens in zip(texts, sources)]
    todo = [i for i, tokens in enumerate(sources) if tokens]
    for start in range(0, len(todo), batch_size):
        rows = todo[start:start + batch_size]
        src, src_lengths = pad_sources([src_vocab.encode(sources[i]) for i in rows])
        hyp = model.beam_search(src.to(device), src_lengths, beam_size=beam_size, max_len=max_len,
                                length_penalty=length_penalty, n_best=n_best)
        for row, i in enumerate(rows):
            for k in range(n_best):
                if not math.isfinite(float(hyp.scores[row, k])):  # fewer distinct hypotheses than n_best
                    continue
                length = int(hyp.lengths[row, k])
                ids = hyp.tokens[row, k, :length].tolist()
                tokens = tgt_vocab.decode(ids)
                alignment = None
                if hyp.alignments is not None:
                    alignment = hyp.alignments[row, k, :length, : len(sources[i])].float().cpu()
                results[i].hypotheses.append(Hypothesis(
                    detokenize(tokens, checkpoint.tgt_level), tokens, float(hyp.log_probs[row, k]),
                    float(hyp.scores[row, k]), bool(ids) and ids[-1] == EOS, alignment))
    return results


@torch.no_grad()
def generate(checkpoint, prompt: str, max_tokens: int = 200, temperature: float = 0.8, top_k: Optional[int] = None,
             seed: int = 0) -> str:
    """The prompt followed by max_tokens sampled tokens (in a word model <eos> prints as a line break),
    the same for the same seed; temperature 0 is greedy, top_k keeps the k likeliest tokens."""
    _require(checkpoint, "lm")
    if not (isinstance(max_tokens, int) and max_tokens >= 0):
        raise ValueError(f"max_tokens must be an integer >= 0, got {max_tokens!r}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and not (isinstance(top_k, int) and top_k >= 1):
        raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    vocab, level = checkpoint.vocab, checkpoint.level
    tokens = tokenize(prompt, level)
    if not tokens:
        raise ValueError("the prompt must hold at least one token")
    generator = torch.Generator().manual_seed(seed)
    # <eos> ends a line in word-level corpora, and never occurs in character streams
    exclude = (PAD, BOS) if level == "word" else (PAD, BOS, EOS)
    ids = checkpoint.model.generate(vocab.encode(tokens), max_tokens, temperature, top_k, generator, exclude=exclude)
    if level == "word":
        return prompt + " " + " ".join(vocab.itos[i] for i in ids).replace(" <eos> ", "\n").replace("<eos>", "\n")
    return prompt + detokenize([vocab.itos[i] for i in ids], level)
