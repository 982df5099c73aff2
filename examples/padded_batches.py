"""Padded batches with per-sequence lengths: no sorting, no packing. rnnkernels takes
`lengths=` next to a padded batch and gives what torch.nn gives for the same data as a
PackedSequence: outputs zero past each end, final states taken at each sequence's own end
(a reverse direction starts there too).

    python examples/padded_batches.py
"""
import argparse

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkernels as rk


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    lengths = torch.tensor([7, 2, 5, 1])  # int64 on the CPU, any order
    x = torch.randn(4, 7, 16)             # (B, T, features), batch_first; what lies past each end is never used
    past_end = torch.arange(7)[None] >= lengths[:, None]

    gru = rk.GRU(16, 32, num_layers=2, bidirectional=True, batch_first=True)
    out, h = gru(x, lengths=lengths)
    print(f"output {tuple(out.shape)}, final state {tuple(h.shape)}; "
          f"output past each end is zero: {bool((out[past_end] == 0).all())}")

    reference = nn.GRU(16, 32, num_layers=2, bidirectional=True, batch_first=True)
    reference.load_state_dict(gru.state_dict())
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    ref_out, ref_h = reference(packed)
    ref_out, _ = pad_packed_sequence(ref_out, batch_first=True, total_length=7)
    (out.sum() + h.sum()).backward()
    (ref_out.sum() + ref_h.sum()).backward()
    differences = {"output": (out - ref_out).detach(), "final state": (h - ref_h).detach(),
                   "weight_ih_l0 gradient": gru.weight_ih_l0.grad - reference.weight_ih_l0.grad}
    worst = 0.0
    for name, difference in differences.items():
        worst = max(worst, float(difference.abs().max()))
        print(f"{name} vs torch.nn.GRU on the same data as a PackedSequence: "
              f"max |difference| {float(difference.abs().max()):.2e}")
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
