"""Data specs the CLI accepts, all local (nothing is downloaded):

language modelling (LMData: 1-D token-id streams)
    builtin:python-stdlib  characters of the standard library's top-level *.py files on this machine
    DIR                    DIR/train.txt, valid.txt, test.txt; word level by default, <eos> at each line end
                           (wikitext style)
    FILE                   one plain text file, split 90/5/5 by position; character level by default
    (level=None picks those defaults; "char" or "word" forces one)
translation (PairData: lists of (source ids, target ids))
    builtin:dates          see rnnkernels.data.dates (character level)
    FILE.tsv               one "source<TAB>target" pair per line, split 90/5/5 by a seeded shuffle;
                           source and target are each read at character or word level

A vocabulary is built from the training split unless one is given (a trained
model's, so that new data is read with the ids the model knows).
"""
import os
import random
import sysconfig
import zlib
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from ..models.common import BOS, EOS, PAD
from .dates import dates_splits
from .vocab import DataError, Vocab, tokenize

SPLITS = ("train", "valid", "test")


class LMData(NamedTuple):
    vocab: Vocab
    level: str
    train: torch.Tensor  # (N,) int64 token ids
    valid: torch.Tensor
    test: torch.Tensor


class PairData(NamedTuple):
    src_vocab: Vocab
    tgt_vocab: Vocab
    src_level: str
    tgt_level: str
    train: List[Tuple[List[int], List[int]]]
    valid: List[Tuple[List[int], List[int]]]
    test: List[Tuple[List[int], List[int]]]


def _read(path: str) -> str:
    if not os.path.exists(path):
        raise DataError(f"data file {path} does not exist")
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    if not text.strip():
        raise DataError(f"data file {path} is empty")
    return text


def _stdlib_splits(max_chars: Optional[int]) -> Dict[str, str]:
    """Each top-level stdlib module goes to test (1 in 20 by a hash of its name), valid (1 in 20) or train."""
    root = sysconfig.get_paths()["stdlib"]
    names = sorted(n for n in os.listdir(root) if n.endswith(".py"))
    if not names:
        raise DataError(f"no *.py files in the standard library folder {root}")
    parts: Dict[str, List[str]] = {s: [] for s in SPLITS}
    for name in names:
        bucket = zlib.crc32(name.encode()) % 20
        split = "test" if bucket == 0 else "valid" if bucket == 1 else "train"
        with open(os.path.join(root, name), encoding="utf-8", errors="replace") as f:
            parts[split].append(f.read())
    texts = {s: "\n".join(p) for s, p in parts.items()}
    if max_chars is not None:
        texts = {s: t[:max_chars] for s, t in texts.items()}
    return texts


LEVELS = ("char", "word")


def _check_level(level: Optional[str], name: str = "level") -> None:
    if level is not None and level not in LEVELS:
        raise DataError(f"{name} must be 'char' or 'word', got {level!r}")


def load_lm(spec: str, max_chars: Optional[int] = None, level: Optional[str] = None,
            vocab: Optional[Vocab] = None) -> LMData:
    """LMData for builtin:python-stdlib, a folder of train/valid/test.txt, or a text file.

    level None: word for a folder, char otherwise; vocab None: built from the training split."""
    _check_level(level)
    if spec == "builtin:python-stdlib":
        texts, default_level = _stdlib_splits(max_chars), "char"
    elif spec.startswith("builtin:"):
        raise DataError(f"unknown built-in language-modelling data {spec!r}; known: builtin:python-stdlib")
    elif os.path.isdir(spec):
        texts, default_level = {s: _read(os.path.join(spec, f"{s}.txt")) for s in SPLITS}, "word"
    elif os.path.exists(spec):
        text = _read(spec)
        a, b = int(len(text) * 0.90), int(len(text) * 0.95)
        texts, default_level = {"train": text[:a], "valid": text[a:b], "test": text[b:]}, "char"
        if min(len(t) for t in texts.values()) < 2:
            raise DataError(f"data file {spec} is too short to split into train/valid/test ({len(text)} characters)")
    else:
        raise DataError(f"data {spec} does not exist (expected builtin:python-stdlib, a folder or a text file)")
    level = level or default_level

    if level == "word":  # one <eos> per line, like wikitext
        tokens = {s: [w for line in t.splitlines() for w in tokenize(line, "word") + ["<eos>"]]
                  for s, t in texts.items()}
    else:
        tokens = {s: tokenize(t, "char") for s, t in texts.items()}
    if vocab is None:
        vocab = Vocab.build([tokens["train"]])
    streams = {s: torch.tensor(vocab.encode(t), dtype=torch.long) for s, t in tokens.items()}
    return LMData(vocab, level, streams["train"], streams["valid"], streams["test"])


def _read_tsv(path: str) -> List[Tuple[str, str]]:
    pairs = []
    for number, line in enumerate(_read(path).splitlines(), 1):
        if not line.strip():
            continue
        if "\t" not in line:
            raise DataError(f"{path} line {number}: no tab between source and target")
        source, target = line.split("\t", 1)
        pairs.append((source, target.split("\t")[0]))
    return pairs


def load_pairs(spec: str, seed: int = 0, level: Optional[str] = None, train_size: int = 50_000,
               src_level: Optional[str] = None, tgt_level: Optional[str] = None,
               src_vocab: Optional[Vocab] = None, tgt_vocab: Optional[Vocab] = None) -> PairData:
    """PairData for builtin:dates (character level) or a TSV file.

    A TSV file's sources are read at src_level and its targets at tgt_level,
    each defaulting to `level`, which defaults to "char"."""
    for value, name in ((level, "level"), (src_level, "src_level"), (tgt_level, "tgt_level")):
        _check_level(value, name)
    if spec == "builtin:dates":
        if "word" in (level, src_level, tgt_level):
            raise DataError("builtin:dates is character data: it has no word level")
        texts, src_level, tgt_level = dates_splits(seed, train_size=train_size), "char", "char"
    elif spec.startswith("builtin:"):
        raise DataError(f"unknown built-in translation data {spec!r}; known: builtin:dates")
    else:
        src_level, tgt_level = src_level or level or "char", tgt_level or level or "char"
        pairs = _read_tsv(spec)
        if len(pairs) < 3:
            raise DataError(f"{spec} has {len(pairs)} pairs: at least 3 are needed for train/valid/test")
        random.Random(seed).shuffle(pairs)
        n_held = max(1, len(pairs) // 20)
        texts = {"test": pairs[:n_held], "valid": pairs[n_held:2 * n_held], "train": pairs[2 * n_held:]}
    tokenized = {s: [(tokenize(a, src_level), tokenize(b, tgt_level)) for a, b in p] for s, p in texts.items()}
    if src_vocab is None:
        src_vocab = Vocab.build(a for a, _ in tokenized["train"])
    if tgt_vocab is None:
        tgt_vocab = Vocab.build(b for _, b in tokenized["train"])
    encoded = {s: [(src_vocab.encode(a), tgt_vocab.encode(b)) for a, b in p] for s, p in tokenized.items()}
    return PairData(src_vocab, tgt_vocab, src_level, tgt_level, encoded["train"], encoded["valid"], encoded["test"])


def pad_sources(sources: Sequence[Sequence[int]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """-> ids (B, S) padded with PAD, lengths (B,) int64 (at least 1: an empty source reads as one PAD)."""
    lengths = torch.tensor([max(1, len(s)) for s in sources], dtype=torch.long)
    ids = torch.full((len(sources), int(lengths.max()) if len(sources) else 0), PAD, dtype=torch.long)
    for i, s in enumerate(sources):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return ids, lengths


def pad_targets(targets: Sequence[Sequence[int]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """-> decoder inputs (B, T) = BOS y, and outputs (B, T) = y EOS, padded with PAD."""
    steps = max(len(t) for t in targets) + 1
    tgt_in = torch.full((len(targets), steps), PAD, dtype=torch.long)
    tgt_out = torch.full((len(targets), steps), PAD, dtype=torch.long)
    for i, t in enumerate(targets):
        t = torch.tensor(t, dtype=torch.long)
        tgt_in[i, 0] = BOS
        tgt_in[i, 1 : len(t) + 1] = t
        tgt_out[i, : len(t)] = t
        tgt_out[i, len(t)] = EOS
    return tgt_in, tgt_out
