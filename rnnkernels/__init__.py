"""rnnkernels: fast fused recurrent layers and attention for PyTorch.

    import rnnkernels as rk
    lstm = rk.LSTM(128, 256, num_layers=2, bidirectional=True)  # a torch.nn.LSTM
    out, (h, c) = lstm(x, lengths=lengths)                      # padded + lengths
"""
from . import backends, functional, reference
from ._version import __version__
from .attention import dot_product_attention
from . import nn  # noqa: E402  (rk.nn.Attention, rk.nn.DotProductAttention)
from .backends import BackendUnavailableError, use_backend
from .cells import GRUCell, LSTMCell, RNNCell
from .modules import GRU, LSTM, RNN, LayerNormGRU, LayerNormLSTM, convert, unconvert

# Import every backend now, not at the first call: torch.compile cannot trace
# the import machinery inside a compiled model.
backends.names()

__all__ = [
    "LSTM",
    "GRU",
    "RNN",
    "LayerNormLSTM",
    "LayerNormGRU",
    "LSTMCell",
    "GRUCell",
    "RNNCell",
    "convert",
    "unconvert",
    "use_backend",
    "dot_product_attention",
    "BackendUnavailableError",
    "backends",
    "functional",
    "reference",
]
