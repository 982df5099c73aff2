"""Figures: the attention alignment of a translation and the loss curve of a training run (matplotlib)."""
import os
from typing import Dict, List, Sequence

import torch

from .errors import UserError
from .files import atomic_write


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UserError("plots need matplotlib (pip install matplotlib, or rnnkernels[plot])") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_plot_path(path: str, option: str) -> None:
    """UserError naming `option` unless matplotlib is importable and writes the file type of `path`."""
    plt = _pyplot()
    extension = os.path.splitext(path)[1].lstrip(".").lower()
    supported = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    if extension not in supported:
        raise UserError(f"{option} {path}: the file name must end in one of "
                        f"{', '.join('.' + e for e in sorted(supported))}")


def _save(fig, path: str) -> None:
    plt = _pyplot()
    extension = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format=extension))
    finally:
        plt.close(fig)


def plot_alignment(source: Sequence[str], output: Sequence[str], weights: torch.Tensor, path: str,
                   title: str = "") -> None:
    """Heatmap of attention weights (len(output), len(source)) with the tokens on the axes, written
    atomically to `path` (PNG, or the type its extension names)."""
    weights = torch.as_tensor(weights).detach().float().cpu()
    if weights.shape != (len(output), len(source)):
        raise ValueError(f"weights must be (len(output), len(source)) = ({len(output)}, {len(source)}), "
                         f"got {tuple(weights.shape)}")
    plt = _pyplot()
    show = lambda t: {" ": "␣", "\t": "⇥"}.get(t, t)  # noqa: E731  spaces stay visible as tick labels
    fig, ax = plt.subplots(figsize=(max(4.0, 0.32 * len(source) + 2.0), max(3.0, 0.32 * len(output) + 1.8)))
    image = ax.imshow(weights.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(source)), [show(t) for t in source], fontsize=9)
    ax.set_yticks(range(len(output)), [show(t) for t in output], fontsize=9)
    ax.set_xlabel("source token")
    ax.set_ylabel("output token")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="attention weight")
    fig.tight_layout()
    _save(fig, path)


def plot_loss(records: List[Dict], path: str, title: str = "") -> None:
    """Training loss (one point per logged interval) and validation loss against the step."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for split, style in (("train", "-"), ("valid", "o-")):
        points = [(r["step"], r["loss"]) for r in records if r.get("split") == split and "loss" in r]
        if points:
            steps, losses = zip(*points)
            ax.plot(steps, losses, style, label=f"{split} loss", markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    _save(fig, path)
