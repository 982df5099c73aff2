"""Recurrent language model: embedding -> rnnkernels LSTM/GRU/RNN stack -> vocabulary logits."""
from typing import List, Optional, Sequence, Tuple, Union

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import make_rnn, run_rnn, wide


class RNNLanguageModel(nn.Module):
    """forward(tokens (B, T), state=None, lengths=None) -> (logits (B, T, V), state).

    With tie_weights the output layer shares the embedding matrix (Press & Wolf,
    2017), which needs embed_size == hidden_size."""

    def __init__(self, vocab_size: int, embed_size: int = 128, hidden_size: int = 256, num_layers: int = 2,
                 cell: str = "lstm", dropout: float = 0.0, tie_weights: bool = False, backend: str = "auto"):
        super().__init__()
        if tie_weights and embed_size != hidden_size:
            raise ValueError(f"tie_weights needs embed_size == hidden_size, got {embed_size} and {hidden_size}")
        self.embedding = nn.Embedding(vocab_size, embed_size)
        self.rnn = make_rnn(cell, embed_size, hidden_size, num_layers, dropout, backend=backend)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_size, vocab_size)
        if tie_weights:
            self.output.weight = self.embedding.weight

    def forward(self, tokens: Tensor, state=None, lengths: Optional[Tensor] = None):
        out, state = run_rnn(self.rnn, self.dropout(self.embedding(tokens)), state, lengths)
        return self.output(self.dropout(out)), state

    @torch.no_grad()
    def log_prob(self, tokens: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """log p(tokens[:, 1:] | tokens[:, 0]) = sum over t >= 1 of log p(x_t | x_<t), shape (B,).

        tokens (B, T): the first token is the context the sentence starts from
        (BOS); lengths (B,) counts it and stops the sum at each sentence's end."""
        if tokens.dim() == 1:
            return self.log_prob(tokens[None], None if lengths is None else torch.as_tensor(lengths).reshape(1))[0]
        logits, _ = self(tokens[:, :-1], lengths=None if lengths is None else (lengths - 1).clamp(min=0))
        step = F.log_softmax(wide(logits), -1).gather(2, tokens[:, 1:, None])[..., 0]  # (B, T-1)
        if lengths is not None:
            keep = torch.arange(step.shape[1], device=step.device)[None] < (lengths.to(step.device) - 1)[:, None]
            step = step * keep
        return step.sum(1)

    @torch.no_grad()
    def perplexity(self, data: Tensor, batch_size: int = 16, bptt: int = 128) -> float:
        """exp(mean next-token loss) over a 1-D token stream, cut into batch_size
        parallel streams and read bptt steps at a time with the state carried over."""
        loss_sum, _, count = self.stream_statistics(data, batch_size, bptt)
        return math.exp(loss_sum / count)

    @torch.no_grad()
    def stream_statistics(self, data: Tensor, batch_size: int = 16, bptt: int = 128) -> Tuple[float, int, int]:
        """(summed next-token loss, correctly predicted tokens (argmax), predicted tokens) over a
        1-D token stream read as in `perplexity`."""
        data = torch.as_tensor(data).reshape(-1)
        columns = (data.numel() - 1) // batch_size
        if columns < 1:
            raise ValueError(f"data has {data.numel()} tokens: too few for batch_size {batch_size}")
        device = self.output.weight.device
        inputs = data[: batch_size * columns].view(batch_size, columns).to(device)
        targets = data[1 : batch_size * columns + 1].view(batch_size, columns).to(device)
        was_training = self.training
        self.eval()
        total, correct, state = 0.0, 0, None
        for start in range(0, columns, bptt):
            logits, state = self(inputs[:, start : start + bptt], state)
            chunk = targets[:, start : start + bptt]
            total += F.cross_entropy(wide(logits).flatten(0, 1), chunk.reshape(-1), reduction="sum").item()
            correct += int((logits.argmax(-1) == chunk).sum())
        self.train(was_training)
        return total, correct, targets.numel()

    @torch.no_grad()
    def generate(self, prompt: Union[Sequence[int], Tensor], max_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, generator: Optional[torch.Generator] = None,
                 stop_token: Optional[int] = None, exclude: Sequence[int] = ()) -> List[int]:
        """Samples max_tokens tokens after prompt (ids). temperature 0 is greedy;
        top_k keeps the k likeliest tokens; generator makes it reproducible;
        tokens in `exclude` (e.g. padding) are never produced."""
        prompt = torch.as_tensor(list(prompt) if not isinstance(prompt, Tensor) else prompt, dtype=torch.long)
        if prompt.dim() != 1 or prompt.numel() == 0:
            raise ValueError(f"prompt must be a non-empty 1-D sequence of token ids, got shape {tuple(prompt.shape)}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        was_training = self.training
        self.eval()
        device = self.output.weight.device
        logits, state = self(prompt[None].to(device))
        out: List[int] = []
        for _ in range(max_tokens):
            last = logits[0, -1].float()
            if exclude:
                last = last.index_fill(0, torch.tensor(list(exclude), device=last.device), float("-inf"))
            if temperature == 0:
                token = int(last.argmax())
            else:
                last = last / temperature
                if top_k is not None and top_k < last.numel():
                    threshold = last.topk(top_k).values[-1]
                    last = last.masked_fill(last < threshold, float("-inf"))
                probs = torch.softmax(last, -1).cpu()
                token = int(torch.multinomial(probs, 1, generator=generator))
            out.append(token)
            if stop_token is not None and token == stop_token:
                break
            logits, state = self(torch.tensor([[token]], device=device), state)
        self.train(was_training)
        return out
