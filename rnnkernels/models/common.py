"""Pieces the models share: special tokens, the recurrent stack factory, the
attention decoder and the batched greedy and beam-search loops over it."""
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modules import GRU, LSTM, RNN
from ..nn.attention import Attention

# Token ids every vocabulary in rnnkernels.data reserves.
PAD, UNK, BOS, EOS = 0, 1, 2, 3

CELLS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}


def make_rnn(cell: str, input_size: int, hidden_size: int, num_layers: int, dropout: float,
             bidirectional: bool = False, backend: str = "auto") -> nn.Module:
    """A batch-first rnnkernels.LSTM / GRU / RNN (tanh)."""
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}")
    return CELLS[cell](input_size, hidden_size, num_layers=num_layers, batch_first=True,
                       dropout=dropout if num_layers > 1 else 0.0, bidirectional=bidirectional, backend=backend)


def run_rnn(rnn: nn.Module, x: Tensor, state=None, lengths: Optional[Tensor] = None):
    """rnn(x, state[, lengths]): torch.nn modules (after rnnkernels.unconvert) take no lengths."""
    if lengths is None:
        return rnn(x, state)
    return rnn(x, state, lengths=lengths)


def map_state(state, fn):
    """Applies fn to h (and c for an LSTM)."""
    return tuple(fn(s) for s in state) if isinstance(state, tuple) else fn(state)


class Hypotheses(NamedTuple):
    """Decoded outputs for a batch, the best one per input.

    tokens (B, L) without BOS, ending in EOS when finished, PAD after it;
    lengths (B,) tokens up to and including EOS; log_probs (B,) their summed
    log-probability; scores (B,) log_probs / lengths ** length_penalty;
    alignments (B, L, Tk) attention weights per output token, or None."""
    tokens: Tensor
    lengths: Tensor
    log_probs: Tensor
    scores: Tensor
    alignments: Optional[Tensor]


class Decoder(nn.Module):
    """Embedding -> recurrent stack -> [Luong attention over `memory`] -> vocabulary logits.

    forward(tokens (B, T), state, memory (B, Tk, M) or None, memory_lengths (B,) or None)
    -> (logits (B, T, V), state, attention weights (B, T, Tk) or None). T is every
    target step at once under teacher forcing, 1 in a decoding loop."""

    def __init__(self, vocab_size: int, embed_size: int, hidden_size: int, num_layers: int = 1, cell: str = "lstm",
                 dropout: float = 0.0, memory_size: Optional[int] = None, attention: Optional[str] = "general",
                 backend: str = "auto"):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_size, padding_idx=PAD)
        self.rnn = make_rnn(cell, embed_size, hidden_size, num_layers, dropout, backend=backend)
        self.attention = None
        if attention is not None:
            self.attention = Attention(hidden_size, memory_size, score=attention,
                                       backend=None if backend == "auto" else backend)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_size, vocab_size)

    def forward(self, tokens: Tensor, state, memory: Optional[Tensor] = None, memory_lengths: Optional[Tensor] = None,
                keys: Optional[Tensor] = None, return_weights: bool = False):
        out, state = run_rnn(self.rnn, self.dropout(self.embedding(tokens)), state)  # (B, T, H)
        weights = None
        if self.attention is not None:
            out, weights = self.attention(out, memory, memory_lengths, keys=keys, return_weights=return_weights)
        return self.output(self.dropout(out)), state, weights


def wide(t: Tensor) -> Tensor:
    """float16/bfloat16 (autocast) logits to float32 for softmax; float32/float64 unchanged."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def never_emit_specials(log_probs: Tensor) -> Tensor:
    """PAD and BOS are inputs, never outputs: a decoder cannot choose them."""
    return log_probs.index_fill(-1, torch.tensor([PAD, BOS], device=log_probs.device), float("-inf"))


def _alignment_width(memory: Optional[Tensor]) -> int:
    return 0 if memory is None else memory.shape[1]


@torch.no_grad()
def greedy_search(decoder: Decoder, state, memory: Optional[Tensor], memory_lengths: Optional[Tensor],
                  max_len: int, length_penalty: float = 1.0) -> Hypotheses:
    """Batched greedy decoding from BOS until every sequence has produced EOS or max_len tokens."""
    batch = (state[0] if isinstance(state, tuple) else state).shape[1]
    device = (state[0] if isinstance(state, tuple) else state).device
    keys = decoder.attention.keys(memory) if decoder.attention is not None else None
    token = torch.full((batch,), BOS, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    log_probs = torch.zeros(batch, dtype=torch.float64, device=device)
    tokens, alignments = [], []
    for _ in range(max_len):
        logits, state, weights = decoder(token[:, None], state, memory, memory_lengths, keys=keys,
                                         return_weights=decoder.attention is not None)
        step_log_probs = never_emit_specials(F.log_softmax(wide(logits[:, 0]), dim=-1))  # (B, V)
        token = step_log_probs.argmax(-1)
        chosen = step_log_probs.gather(1, token[:, None])[:, 0]
        token = token.masked_fill(finished, PAD)
        log_probs += chosen.masked_fill(finished, 0.0)
        lengths += (~finished).long()
        tokens.append(token)
        if weights is not None:
            alignments.append(wide(weights[:, 0]).masked_fill(finished[:, None], 0.0))
        finished |= token == EOS
        if bool(finished.all()):
            break
    tokens = torch.stack(tokens, 1) if tokens else torch.zeros(batch, 0, dtype=torch.long, device=device)
    aligned = torch.stack(alignments, 1) if alignments else None
    scores = log_probs / lengths.clamp(min=1).float() ** length_penalty
    return Hypotheses(tokens, lengths, log_probs, scores, aligned)


@torch.no_grad()
def beam_search(decoder: Decoder, state, memory: Optional[Tensor], memory_lengths: Optional[Tensor],
                max_len: int, beam_size: int = 5, length_penalty: float = 1.0,
                n_best: Optional[int] = None) -> Hypotheses:
    """Batched beam search. Hypotheses are ranked by log_prob / length ** length_penalty
    (length counts EOS); a finished hypothesis stays in its beam, extended by PAD at
    no cost and with its length frozen, until all beams of all inputs finished.

    n_best None: the best hypothesis per input, shapes as in Hypotheses. n_best N
    (1 <= N <= beam_size): the N best per input, best first, each field with an
    extra dimension after the batch: tokens (B, N, L), lengths (B, N), ... A beam
    that never held a hypothesis (fewer candidates than beams) scores -inf."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if n_best is not None and not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must lie in [1, beam_size = {beam_size}], got {n_best}")
    h = state[0] if isinstance(state, tuple) else state
    batch, device, K = h.shape[1], h.device, beam_size
    flat = torch.arange(batch, device=device).repeat_interleave(K)  # (B*K,) input of each beam row
    state = map_state(state, lambda s: s.index_select(1, flat))
    if memory is not None:
        memory = memory.index_select(0, flat)
        memory_lengths = memory_lengths.index_select(0, flat.to(memory_lengths.device)) if memory_lengths is not None else None
    keys = decoder.attention.keys(memory) if decoder.attention is not None else None
    width = _alignment_width(memory)

    log_probs = torch.full((batch, K), float("-inf"), dtype=torch.float64, device=device)
    log_probs[:, 0] = 0.0  # only the first beam is alive at the start: no duplicate hypotheses
    lengths = torch.zeros(batch, K, dtype=torch.long, device=device)
    finished = torch.zeros(batch, K, dtype=torch.bool, device=device)
    history = torch.zeros(batch, K, 0, dtype=torch.long, device=device)  # (B, K, t)
    align_history = torch.zeros(batch, K, 0, width, device=device,  # (B, K, t, Tk)
                                dtype=wide(memory).dtype if memory is not None else torch.float32)
    token = torch.full((batch * K,), BOS, dtype=torch.long, device=device)
    rows = (torch.arange(batch, device=device) * K)[:, None]  # (B, 1)
    for step in range(max_len):
        logits, state, weights = decoder(token[:, None], state, memory, memory_lengths, keys=keys,
                                         return_weights=decoder.attention is not None)
        vocab = logits.shape[-1]
        step_log_probs = never_emit_specials(F.log_softmax(wide(logits[:, 0]), dim=-1)).view(batch, K, vocab)
        # A finished hypothesis may only continue with PAD, at no cost.
        pad_only = torch.full((vocab,), float("-inf"), device=device)
        pad_only[PAD] = 0.0
        step_log_probs = torch.where(finished[..., None], pad_only, step_log_probs)
        candidate_log_probs = log_probs[..., None] + step_log_probs  # (B, K, V)
        candidate_lengths = torch.where(finished, lengths, torch.full_like(lengths, step + 1))
        candidate_scores = candidate_log_probs / candidate_lengths[..., None].float() ** length_penalty
        _, best = candidate_scores.view(batch, K * vocab).topk(K, dim=1)  # (B, K), sorted
        parent, token_bk = best // vocab, best % vocab
        log_probs = candidate_log_probs.view(batch, K * vocab).gather(1, best)
        lengths = candidate_lengths.gather(1, parent)
        finished = finished.gather(1, parent) | (token_bk == EOS)
        history = torch.cat([history.gather(1, parent[..., None].expand_as(history)), token_bk[..., None]], 2)
        if width:
            step_align = wide(weights[:, 0]).view(batch, K, width).gather(1, parent[..., None].expand(-1, -1, width))
            align_history = torch.cat([align_history.gather(1, parent[..., None, None].expand_as(align_history)),
                                       step_align[:, :, None]], 2)
        state = map_state(state, lambda s: s.index_select(1, (rows + parent).view(-1)))
        token = token_bk.view(-1)
        if bool(finished.all()):
            break
    scores = log_probs / lengths.clamp(min=1).float() ** length_penalty
    order = scores.sort(dim=1, descending=True, stable=True).indices[:, : 1 if n_best is None else n_best]  # (B, N)
    pick = lambda t: t[torch.arange(batch, device=device)[:, None], order]  # noqa: E731  (B, N, ...)
    tokens = pick(history)
    steps = tokens.shape[2]
    alive = torch.arange(steps, device=device) < pick(lengths)[..., None]  # (B, N, L)
    tokens = tokens.masked_fill(~alive, PAD)
    alignments = pick(align_history).masked_fill(~alive[..., None], 0.0) if width else None
    best = Hypotheses(tokens, pick(lengths), pick(log_probs), pick(scores), alignments)
    if n_best is None:
        best = Hypotheses(*(None if t is None else t[:, 0] for t in best))
    return best
