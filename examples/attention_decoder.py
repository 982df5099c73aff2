"""An attention decoder built from rnnkernels parts, trained for a few seconds to reverse digit
strings, and its attention alignment plotted: the weights run along the anti-diagonal.

Encoder: rk.LSTM (bidirectional) over the padded sources with their lengths; decoder:
rk.LSTM + rk.nn.Attention (Luong, "general") over the encoder outputs of each source's own
length; the plot comes from rnnkernels.app.plot_alignment.

    python examples/attention_decoder.py --plot runs/reverse-alignment.png
"""
import argparse

import torch
import torch.nn.functional as F
from torch import nn

import rnnkernels as rk
from rnnkernels.app import plot_alignment

BOS, DIGITS = 10, 10  # tokens 0-9 are digits, 10 starts a target


class Reverser(nn.Module):
    def __init__(self, hidden=64):
        super().__init__()
        self.embed = nn.Embedding(DIGITS + 1, 32)
        self.encoder = rk.LSTM(32, hidden // 2, bidirectional=True, batch_first=True)
        self.decoder = rk.LSTM(32, hidden, batch_first=True)
        self.attention = rk.nn.Attention(hidden, hidden, score="general")
        self.out = nn.Linear(hidden, DIGITS)

    def forward(self, src, lengths, tgt_in):
        memory, (h, c) = self.encoder(self.embed(src), lengths=lengths)    # memory (B, S, H), zero past each end
        merge = lambda s: torch.cat([s[0], s[1]], -1)[None]                 # noqa: E731  (2, B, H/2) -> (1, B, H)
        queries, _ = self.decoder(self.embed(tgt_in), (merge(h), merge(c)))
        context, weights = self.attention(queries, memory, lengths, return_weights=True)  # weights (B, T, S)
        return self.out(context), weights


def batch(size, generator):
    lengths = torch.randint(3, 9, (size,), generator=generator)
    src = torch.randint(0, DIGITS, (size, 8), generator=generator) * (torch.arange(8)[None] < lengths[:, None])
    tgt = torch.stack([torch.cat([s[:n].flip(0), s[n:]]) for s, n in zip(src, lengths)])
    return src, lengths, torch.cat([torch.full((size, 1), BOS), tgt[:, :-1]], 1), tgt


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--plot", default="runs/reverse-alignment.png")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = Reverser()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(1, args.steps + 1):
        src, lengths, tgt_in, tgt = batch(64, generator)
        logits, _ = model(src, lengths, tgt_in)
        mask = torch.arange(8)[None] < lengths[:, None]
        loss = F.cross_entropy(logits[mask], tgt[mask])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == args.steps:
            print(f"step {step}: loss {loss.item():.4f}")

    model.eval()
    src, lengths, tgt_in, tgt = batch(1, generator)
    with torch.no_grad():
        logits, weights = model(src, lengths, tgt_in)  # teacher-forced, to show the alignment
    n = int(lengths[0])
    source = [str(d) for d in src[0, :n].tolist()]
    output = [str(d) for d in logits[0, :n].argmax(-1).tolist()]
    plot_alignment(source, output, weights[0, :n, :n], args.plot, f"reverse {''.join(source)} -> {''.join(output)}")
    print(f"{''.join(source)} -> {''.join(output)}; alignment written to {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
