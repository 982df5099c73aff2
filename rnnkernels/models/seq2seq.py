"""Encoder-decoder with Luong attention, and vector-to-sequence.

Seq2Seq: a bidirectional multi-layer encoder (hidden_size // 2 per direction,
so its outputs and its final states, both directions concatenated, have
hidden_size features) starts a decoder of the same depth; the decoder attends
over the encoder outputs of each source's own length (no input feeding, so a
teacher-forced target runs as one recurrent call plus one attention call).
"""
from typing import Optional

import torch
from torch import Tensor, nn

from .common import BOS, PAD, Decoder, Hypotheses, beam_search, greedy_search, make_rnn, run_rnn


def _check_forcing_ratio(ratio: float) -> None:
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"teacher_forcing_ratio must lie in [0, 1], got {ratio}")


def decode_targets(decoder: Decoder, tgt_in: Tensor, state, memory: Optional[Tensor], memory_lengths: Optional[Tensor],
                   teacher_forcing_ratio: float, generator: Optional[torch.Generator], return_weights: bool):
    """Logits (B, T, V) for the target inputs tgt_in (B, T) (BOS, y_1, .., y_{T-1}).

    Ratio 1: every step at once. Below 1: one step at a time; before each step
    after the first, each sequence feeds the true previous token with
    probability `teacher_forcing_ratio`, else its own greedy prediction
    (scheduled sampling, Bengio et al. 2015)."""
    _check_forcing_ratio(teacher_forcing_ratio)
    if teacher_forcing_ratio >= 1.0:
        logits, _, weights = decoder(tgt_in, state, memory, memory_lengths, return_weights=return_weights)
        return logits, weights
    keys = decoder.attention.keys(memory) if decoder.attention is not None else None
    token = tgt_in[:, 0]
    all_logits, all_weights = [], []
    for t in range(tgt_in.shape[1]):
        logits, state, weights = decoder(token[:, None], state, memory, memory_lengths, keys=keys,
                                         return_weights=return_weights)
        all_logits.append(logits)
        all_weights.append(weights)
        if t + 1 < tgt_in.shape[1]:
            draw = torch.rand(tgt_in.shape[0], generator=generator, device="cpu").to(tgt_in.device)
            token = torch.where(draw < teacher_forcing_ratio, tgt_in[:, t + 1], logits[:, 0].argmax(-1))
    weights = torch.cat(all_weights, 1) if return_weights and all_weights[0] is not None else None
    return torch.cat(all_logits, 1), weights


class Seq2Seq(nn.Module):
    """forward(src (B, S), src_lengths (B,), tgt_in (B, T), teacher_forcing_ratio=1.0)
    -> logits (B, T, V_tgt) [, attention weights (B, T, S) with return_weights]."""

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, embed_size: int = 64, hidden_size: int = 128,
                 num_layers: int = 1, cell: str = "lstm", attention: Optional[str] = "general", dropout: float = 0.0,
                 backend: str = "auto"):
        super().__init__()
        if hidden_size % 2:
            raise ValueError(f"hidden_size must be even (half per encoder direction), got {hidden_size}")
        self.num_layers = num_layers
        self.src_embedding = nn.Embedding(src_vocab_size, embed_size, padding_idx=PAD)
        self.encoder = make_rnn(cell, embed_size, hidden_size // 2, num_layers, dropout, bidirectional=True,
                                backend=backend)
        self.decoder = Decoder(tgt_vocab_size, embed_size, hidden_size, num_layers, cell, dropout,
                               memory_size=hidden_size, attention=attention, backend=backend)
        self.dropout = nn.Dropout(dropout)

    def encode(self, src: Tensor, src_lengths: Tensor):
        """-> memory (B, S, H), zero past each length, and the decoder's initial state (L, B, H)."""
        memory, state = run_rnn(self.encoder, self.dropout(self.src_embedding(src)), None, src_lengths.cpu())

        def merge(s: Tensor) -> Tensor:  # (2L, B, H/2), directions interleaved per layer -> (L, B, H)
            s = s.view(self.num_layers, 2, *s.shape[1:])
            return torch.cat([s[:, 0], s[:, 1]], -1)

        state = tuple(merge(s) for s in state) if isinstance(state, tuple) else merge(state)
        return memory, state

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor, teacher_forcing_ratio: float = 1.0,
                generator: Optional[torch.Generator] = None, return_weights: bool = False):
        memory, state = self.encode(src, src_lengths)
        lengths = src_lengths.to(memory.device)
        logits, weights = decode_targets(self.decoder, tgt_in, state, memory, lengths, teacher_forcing_ratio,
                                         generator, return_weights)
        return (logits, weights) if return_weights else logits

    @torch.no_grad()
    def greedy_decode(self, src: Tensor, src_lengths: Tensor, max_len: int = 100,
                      length_penalty: float = 1.0) -> Hypotheses:
        memory, state = self.encode(src, src_lengths)
        return greedy_search(self.decoder, state, memory, src_lengths.to(memory.device), max_len, length_penalty)

    @torch.no_grad()
    def beam_search(self, src: Tensor, src_lengths: Tensor, beam_size: int = 5, max_len: int = 100,
                    length_penalty: float = 1.0, n_best: Optional[int] = None) -> Hypotheses:
        """The best hypothesis per source, or the n_best best (see models.common.beam_search)."""
        memory, state = self.encode(src, src_lengths)
        return beam_search(self.decoder, state, memory, src_lengths.to(memory.device), max_len, beam_size,
                           length_penalty, n_best)


class VectorToSequence(nn.Module):
    """A decoder whose initial state is tanh(W f + b) of a feature vector f
    (image captioning: f from a CNN). forward(features (B, F), tgt_in (B, T)) -> logits (B, T, V)."""

    def __init__(self, feature_size: int, vocab_size: int, embed_size: int = 64, hidden_size: int = 128,
                 num_layers: int = 1, cell: str = "lstm", dropout: float = 0.0, backend: str = "auto"):
        super().__init__()
        self.num_layers, self.hidden_size, self.cell = num_layers, hidden_size, cell
        states = 2 if cell == "lstm" else 1  # (h, c) or h
        self.bridge = nn.Linear(feature_size, states * num_layers * hidden_size)
        self.decoder = Decoder(vocab_size, embed_size, hidden_size, num_layers, cell, dropout, attention=None,
                               backend=backend)

    def initial_state(self, features: Tensor):
        parts = torch.tanh(self.bridge(features)).view(features.shape[0], -1, self.num_layers, self.hidden_size)
        parts = parts.permute(1, 2, 0, 3).contiguous()  # (states, L, B, H)
        return (parts[0], parts[1]) if self.cell == "lstm" else parts[0]

    def forward(self, features: Tensor, tgt_in: Tensor, teacher_forcing_ratio: float = 1.0,
                generator: Optional[torch.Generator] = None) -> Tensor:
        logits, _ = decode_targets(self.decoder, tgt_in, self.initial_state(features), None, None,
                                   teacher_forcing_ratio, generator, False)
        return logits

    @torch.no_grad()
    def greedy_decode(self, features: Tensor, max_len: int = 50, length_penalty: float = 1.0) -> Hypotheses:
        return greedy_search(self.decoder, self.initial_state(features), None, None, max_len, length_penalty)

    @torch.no_grad()
    def beam_search(self, features: Tensor, beam_size: int = 5, max_len: int = 50,
                    length_penalty: float = 1.0, n_best: Optional[int] = None) -> Hypotheses:
        return beam_search(self.decoder, self.initial_state(features), None, None, max_len, beam_size,
                           length_penalty, n_best)
