"""Drop-in swap: an existing model built on torch.nn.LSTM runs on rnnkernels with the same weights
and the same numbers, in place (rk.convert), and goes back with rk.unconvert.

    python examples/drop_in_swap.py
"""
import argparse

import torch
from torch import nn

import rnnkernels as rk


class Tagger(nn.Module):
    """A model written for torch.nn: embedding -> 2-layer bidirectional LSTM -> tag scores."""

    def __init__(self, vocab=100, hidden=64, tags=5):
        super().__init__()
        self.embed = nn.Embedding(vocab, 32)
        self.lstm = nn.LSTM(32, hidden, num_layers=2, bidirectional=True, batch_first=True)
        self.out = nn.Linear(2 * hidden, tags)

    def forward(self, tokens):
        hidden, _ = self.lstm(self.embed(tokens))
        return self.out(hidden)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    model = Tagger()
    tokens = torch.randint(0, 100, (8, 20))
    with torch.no_grad():
        expected = model(tokens)

    rk.convert(model)  # every torch.nn.LSTM/GRU/RNN inside becomes its rnnkernels twin: same object, same weights
    assert isinstance(model.lstm, rk.LSTM) and isinstance(model.lstm, nn.LSTM)
    with torch.no_grad():
        ours = model(tokens)
    difference = float((ours - expected).abs().max())
    print(f"{type(model.lstm).__module__}.{type(model.lstm).__name__} on backend "
          f"{rk.backends.available('cpu')[0]!r}: max |difference| to torch.nn {difference:.2e}")

    # a fresh rnnkernels layer loads a torch.nn state_dict as it is
    fresh = rk.LSTM(32, 64, num_layers=2, bidirectional=True, batch_first=True)
    fresh.load_state_dict(nn.LSTM(32, 64, num_layers=2, bidirectional=True, batch_first=True).state_dict())

    rk.unconvert(model)  # and back: plain torch.nn modules again (e.g. before torch.save for a user without rnnkernels)
    assert type(model.lstm) is nn.LSTM
    print(f"after rk.unconvert: {type(model.lstm).__module__}.{type(model.lstm).__name__}")
    return 0 if torch.allclose(ours, expected, atol=1e-5) else 1


if __name__ == "__main__":
    raise SystemExit(main())
