"""Modules: the drop-in recurrent layers and the attention layers."""
from ..modules import GRU, LSTM, RNN
from .attention import Attention, DotProductAttention

__all__ = ["LSTM", "GRU", "RNN", "DotProductAttention", "Attention"]
