"""Models built from rnnkernels layers: language model, encoder-decoder with
Luong attention, vector-to-sequence."""
from .common import BOS, EOS, PAD, UNK, Decoder, Hypotheses, beam_search, greedy_search
from .language_model import RNNLanguageModel
from .seq2seq import Seq2Seq, VectorToSequence

__all__ = ["RNNLanguageModel", "Seq2Seq", "VectorToSequence", "Decoder", "Hypotheses", "greedy_search",
           "beam_search", "PAD", "UNK", "BOS", "EOS"]
