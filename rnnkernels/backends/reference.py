"""The `reference` backend: pure PyTorch, any device and dtype; the semantics
every other backend is checked against."""
from .. import attention, reference
from . import register

register("rnn", "reference", reference.rnn_layer, priority={"cpu": 0, "cuda": 0})
register("rnn_ext", "reference", reference.rnn_layer_extended, priority={"cpu": 0, "cuda": 0})
register("attention", "reference", attention.reference_attention, priority={"cpu": 0, "cuda": 0})
