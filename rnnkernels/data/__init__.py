"""Built-in data sets and file loaders for the training CLI (nothing is downloaded)."""
from .dates import FORMATS, dates_splits
from .loaders import LMData, PairData, load_lm, load_pairs, pad_sources, pad_targets
from .vocab import SPECIALS, DataError, Vocab, detokenize, tokenize

__all__ = ["FORMATS", "dates_splits", "LMData", "PairData", "load_lm", "load_pairs", "pad_sources", "pad_targets",
           "SPECIALS", "DataError", "Vocab", "detokenize", "tokenize"]
