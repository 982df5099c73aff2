"""Built-in data sets and file loaders for the training CLI (nothing is downloaded)."""
from .dates import FORMATS, dates_splits
from .loaders import LEVELS, LMData, PairData, load_lm, load_pairs, pad_sources, pad_targets
from .vocab import SPECIALS, DataError, Vocab, detokenize, tokenize

__all__ = ["FORMATS", "LEVELS", "dates_splits", "LMData", "PairData", "load_lm", "load_pairs", "pad_sources",
           "pad_targets", "SPECIALS", "DataError", "Vocab", "detokenize", "tokenize"]
