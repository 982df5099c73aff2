"""The benchmark shapes, defined once; `rnnkernels bench`, the scripts in this
folder and the GPU playbook all read them from here."""
from typing import List, NamedTuple


class RNNShape(NamedTuple):
    steps: int  # T
    batch: int  # B
    input_size: int  # I
    hidden_size: int  # H

    def __str__(self) -> str:
        return f"T{self.steps} B{self.batch} I{self.input_size} H{self.hidden_size}"


class RNNConfig(NamedTuple):
    cell: str  # "lstm", "gru", "rnn_tanh"
    shape: RNNShape
    num_layers: int = 1
    bidirectional: bool = False
    varlen: bool = False  # padded + lengths vs torch's PackedSequence


# (T, B, input, hidden) of the CPU kernels issue: a word-level LM (small and
# medium), a long sequence, a wide layer, batch 1, a big batch of short ones.
CPU_SHAPES = [
    RNNShape(35, 20, 200, 200),
    RNNShape(35, 20, 650, 650),
    RNNShape(100, 8, 128, 256),
    RNNShape(50, 64, 256, 512),
    RNNShape(200, 1, 64, 128),
    RNNShape(16, 256, 128, 128),
]
# The GPU playbook adds a long wide layer and a batch/hidden sweep.
GPU_EXTRA_SHAPES = [RNNShape(1024, 16, 768, 768)] + [
    RNNShape(100, batch, hidden, hidden) for hidden in (256, 512, 1024) for batch in (1, 4, 16, 64, 256)
]
CELLS = ("lstm", "gru", "rnn_tanh")


def rnn_configs(full: bool, gpu: bool = False) -> List[RNNConfig]:
    """The quick suite (< 3 minutes on a 2-core CPU) or the full one."""
    shapes = CPU_SHAPES + (GPU_EXTRA_SHAPES if gpu and full else [])
    if not full:
        shapes = [CPU_SHAPES[0], CPU_SHAPES[2], CPU_SHAPES[5]]
    configs = [RNNConfig(cell, shape) for cell in CELLS for shape in shapes]
    deep = shapes if full else shapes[:1]
    configs += [RNNConfig(cell, shape, num_layers=2, bidirectional=True) for cell in CELLS for shape in deep]
    configs += [RNNConfig(cell, shapes[0], varlen=True) for cell in CELLS]
    return configs


class AttentionShape(NamedTuple):
    batch: int
    heads: int  # 0: 3-D (B, T, D) inputs
    q_steps: int
    k_steps: int
    dim: int
    v_dim: int

    def __str__(self) -> str:
        heads = f" H{self.heads}" if self.heads else ""
        return f"B{self.batch}{heads} Tq{self.q_steps} Tk{self.k_steps} D{self.dim}"


# Seq2seq shapes of the attention issue: a translation batch, a long multi-head
# one, and one decoding step over a long source.
ATTENTION_SHAPES = [
    AttentionShape(64, 0, 50, 50, 256, 256),
    AttentionShape(32, 8, 512, 512, 64, 64),
    AttentionShape(32, 0, 1, 1024, 256, 256),
]
