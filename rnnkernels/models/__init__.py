"""Models built from rnnkernels layers (language model, encoder-decoder, vector-to-sequence)."""
