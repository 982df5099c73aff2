"""Loading a checkpoint of `rnnkernels train` from Python with the public loader, and using it.

    rnnkernels train seq2seq --data builtin:dates --steps 2000 --checkpoint runs/dates.pt
    python examples/load_checkpoint.py runs/dates.pt "25 Nov 2026" "the 3rd of July, 1999"

    rnnkernels train lm --data builtin:python-stdlib --steps 1000 --checkpoint runs/stdlib.pt
    python examples/load_checkpoint.py runs/stdlib.pt "def "
"""
import argparse

import torch

from rnnkernels.app import load_checkpoint, plot_alignment


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("texts", nargs="*", help="sources to translate, or prompts to continue")
    parser.add_argument("--plot", default=None, help="seq2seq: alignment of the first source to this PNG")
    args = parser.parse_args(argv)

    ck = load_checkpoint(args.checkpoint, device="cpu")  # the model (eval mode), vocabularies, levels, metrics
    parameters = sum(p.numel() for p in ck.model.parameters())
    print(f"{args.checkpoint}: a {ck.kind} model after {ck.step} steps, {parameters:,} parameters, "
          f"trained on {ck.options.get('data', '?')}")
    recorded = {k: v for k, v in ck.metrics.items() if k.startswith(("valid_", "test_"))}
    if recorded:
        print("metrics at its last evaluation: " + ", ".join(f"{k} {v:.4g}" for k, v in recorded.items()))

    if ck.kind == "seq2seq":
        results = ck.translate(args.texts or ["25 Nov 2026"], beam_size=5, n_best=2)
        for result in results:
            for rank, hypothesis in enumerate(result.hypotheses, 1):
                print(f"{result.source!r} -> [{rank}] {hypothesis.text!r}  (score {hypothesis.score:.4f}"
                      f"{'' if hypothesis.finished else ', cut off'})")
        first = results[0]
        if args.plot and first.best is not None and first.best.alignment is not None:
            plot_alignment(first.source_tokens, first.best.tokens + ["<eos>"] * first.best.finished,
                           first.best.alignment, args.plot, f"{first.source!r} -> {first.best.text!r}")
            print(f"alignment written to {args.plot}")
        # the model itself is a plain nn.Module: e.g. the encoder's outputs for one source
        src = torch.tensor([ck.src_vocab.encode(first.source_tokens)])
        with torch.no_grad():
            memory, _ = ck.model.encode(src, torch.tensor([src.shape[1]]))
        print(f"encoder output for {first.source!r}: {tuple(memory.shape)}")
    else:
        for prompt in args.texts or ["\n"]:
            print(ck.generate(prompt, max_tokens=60, temperature=0.8, seed=0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
