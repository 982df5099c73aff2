"""Token vocabularies with the four reserved ids the models use (PAD, UNK, BOS, EOS)."""
from collections import Counter
from typing import Iterable, List, Sequence

from ..models.common import BOS, EOS, PAD, UNK

SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")  # ids PAD, UNK, BOS, EOS


class DataError(ValueError):
    """Bad or missing data (the CLI prints it as one line)."""


def tokenize(text: str, level: str) -> List[str]:
    if level == "char":
        return list(text)
    if level == "word":
        return text.split()
    raise ValueError(f"level must be 'char' or 'word', got {level!r}")


def detokenize(tokens: Sequence[str], level: str) -> str:
    return "".join(tokens) if level == "char" else " ".join(tokens)


class Vocab:
    """itos: list of token strings, SPECIALS first; unknown tokens map to UNK."""

    def __init__(self, itos: Sequence[str]):
        itos = list(itos)
        if tuple(itos[: len(SPECIALS)]) != SPECIALS:
            raise DataError(f"a vocabulary must start with {SPECIALS}")
        if not all(isinstance(token, str) for token in itos):
            raise DataError("a vocabulary must hold strings only")
        if len(set(itos)) != len(itos):
            raise DataError("a vocabulary must not repeat a token")
        self.itos = itos
        self.stoi = {token: i for i, token in enumerate(itos)}
        assert (self.stoi["<pad>"], self.stoi["<unk>"], self.stoi["<bos>"], self.stoi["<eos>"]) == (PAD, UNK, BOS, EOS)

    @classmethod
    def build(cls, sequences: Iterable[Sequence[str]], min_freq: int = 1) -> "Vocab":
        counts = Counter()
        for tokens in sequences:
            counts.update(tokens)
        kept = sorted(t for t, n in counts.items() if n >= min_freq and t not in SPECIALS)
        return cls(list(SPECIALS) + kept)

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def encode(self, tokens: Sequence[str]) -> List[int]:
        return [self.stoi.get(t, UNK) for t in tokens]

    def decode(self, ids: Iterable[int]) -> List[str]:
        """Tokens up to (not including) the first EOS, without PAD and BOS."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i not in (PAD, BOS):
                out.append(self.itos[i])
        return out
