"""Modules: the drop-in recurrent layers (and, with the attention kernels, attention layers)."""
from ..modules import GRU, LSTM, RNN

__all__ = ["LSTM", "GRU", "RNN"]
