"""The application around the kernels: the training CLI and the tools to use its results from Python.

    from rnnkernels.app import load_checkpoint, plot_alignment
    ck = load_checkpoint("runs/dates.pt")                 # a checkpoint of `rnnkernels train seq2seq`
    [t] = ck.translate(["25 Nov 2026"], beam_size=5)
    plot_alignment(t.source_tokens, t.best.tokens + ["<eos>"], t.best.alignment, "alignment.png")

Modules: runtime (device, backend, torchrun), checkpoints (format, loader), tasks (lm and
seq2seq data, loss, evaluation), schedules (learning rate, teacher forcing), loop (training),
inference (translate, generate), reporting (log lines, metrics files), plotting, options and
commands (the command line).
"""
from .checkpoints import CHECKPOINT_FORMAT, Checkpoint, load_checkpoint, save_checkpoint
from .errors import UserError
from .inference import Hypothesis, Translation, generate, translate
from .plotting import plot_alignment, plot_loss

__all__ = ["load_checkpoint", "Checkpoint", "save_checkpoint", "CHECKPOINT_FORMAT", "translate", "generate",
           "Translation", "Hypothesis", "plot_alignment", "plot_loss", "UserError"]
