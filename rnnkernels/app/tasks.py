"""The two training tasks: what a batch is, its loss, and how a split is evaluated.

A task is built from the training options (a dict, as `rnnkernels train` resolves them) and
optionally a trained model's vocabularies, so `evaluate` reads new data with the model's ids.
"""
import math
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import Vocab, load_lm, load_pairs, pad_sources, pad_targets
from ..models import PAD
from .errors import UserError
from .metrics import bleu
from .runtime import Runtime

SPLITS = ("train", "valid", "test", "all")


class BatchStats(NamedTuple):
    """What a training step predicted: target tokens and how many of them the argmax got right."""
    tokens: int
    correct: int


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 700.0))


class LMTask:
    """Next-token prediction on windows of bptt + 1 tokens of the training stream, each read from a zero state."""

    kind = "lm"

    def __init__(self, options: Dict, vocab: Optional[Vocab] = None):
        level = None if options.get("level", "auto") == "auto" else options["level"]
        self.data = load_lm(options["data"], max_chars=options.get("max_chars"), level=level, vocab=vocab)
        self.bptt = options["bptt"]
        self.windows = (self.data.train.numel() - 1) // self.bptt
        self.eval_tokens = options.get("eval_tokens")
        self.config = dict(vocab_size=len(self.data.vocab), embed_size=options["embed"], hidden_size=options["hidden"],
                           num_layers=options["layers"], cell=options["cell"], dropout=options["dropout"],
                           tie_weights=bool(options["tie"]))
        self.vocabs = {"vocab": self.data.vocab.itos}
        self.levels = {"level": self.data.level}

    def check_trainable(self, spec: str) -> None:
        if self.windows < 1:
            raise UserError(f"--data {spec}: the training split has fewer than --bptt {self.bptt} + 1 tokens")

    def describe(self) -> str:
        sizes = ", ".join(f"{getattr(self.data, s).numel():,} {s}" for s in ("train", "valid", "test"))
        if self.eval_tokens is not None:
            sizes += f" (evaluated: the first {self.eval_tokens:,})"
        return f"{self.data.level} level, tokens: {sizes} | vocabulary {len(self.data.vocab):,}"

    def __len__(self) -> int:
        return self.windows

    def batch(self, indices: List[int], device):
        starts = torch.tensor(indices) * self.bptt
        window = self.data.train[starts[:, None] + torch.arange(self.bptt + 1)].to(device)  # (B, bptt + 1)
        return window[:, :-1], window[:, 1:]

    def loss(self, model: nn.Module, batch, forcing: float = 1.0) -> Tuple[Tensor, BatchStats]:
        inputs, targets = batch
        logits, _ = model(inputs)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.reshape(-1))
        return loss, BatchStats(targets.numel(), int((logits.detach().argmax(-1) == targets).sum()))

    def _stream(self, split: str) -> Tensor:
        if split == "all":
            return torch.cat([self.data.train, self.data.valid, self.data.test])
        return getattr(self.data, split)

    def evaluate(self, model: nn.Module, runtime: Runtime, split: str = "valid") -> Dict[str, float]:
        """loss (nats per token), ppl and next-token accuracy over the first eval_tokens tokens of `split`."""
        stream = self._stream(split)[: self.eval_tokens]
        if stream.numel() < 2:
            raise UserError(f"the {split} split has {stream.numel()} tokens: at least 2 are needed to evaluate")
        # up to 16 parallel streams, fewer for a short split
        with runtime.autocast():
            total, correct, count = model.stream_statistics(stream, batch_size=min(16, stream.numel() - 1),
                                                            bptt=self.bptt)
        return {"loss": total / count, "ppl": _ppl(total / count), "accuracy": correct / count}


class Seq2SeqTask:
    """Translation pairs; loss per target token (PAD ignored); exact match by greedy decoding, BLEU on word targets."""

    kind = "seq2seq"

    def __init__(self, options: Dict, src_vocab: Optional[Vocab] = None, tgt_vocab: Optional[Vocab] = None):
        level = options.get("level")
        self.data = load_pairs(options["data"], seed=options.get("data_seed", 0), level=level,
                               src_level=options.get("src_level"), tgt_level=options.get("tgt_level"),
                               train_size=options.get("train_size", 50_000), src_vocab=src_vocab, tgt_vocab=tgt_vocab)
        self.eval_size = options.get("eval_size")
        self.max_len = max((len(t) for _, t in self.data.train), default=0) + 5
        self.config = dict(src_vocab_size=len(self.data.src_vocab), tgt_vocab_size=len(self.data.tgt_vocab),
                           embed_size=options["embed"], hidden_size=options["hidden"], num_layers=options["layers"],
                           cell=options["cell"],
                           attention=None if options["attention"] == "none" else options["attention"],
                           dropout=options["dropout"])
        self.vocabs = {"src_vocab": self.data.src_vocab.itos, "tgt_vocab": self.data.tgt_vocab.itos}
        self.levels = {"src_level": self.data.src_level, "tgt_level": self.data.tgt_level}

    def check_trainable(self, spec: str) -> None:
        if not self.data.train:
            raise UserError(f"--data {spec}: no training pairs")

    def describe(self) -> str:
        sizes = ", ".join(f"{len(getattr(self.data, s)):,} {s}" for s in ("train", "valid", "test"))
        if self.eval_size is not None:
            sizes += f" (evaluated: the first {self.eval_size:,})"
        return (f"source {self.data.src_level} level, target {self.data.tgt_level} level, pairs: {sizes} | "
                f"vocabulary {len(self.data.src_vocab):,} source, {len(self.data.tgt_vocab):,} target")

    def __len__(self) -> int:
        return len(self.data.train)

    def batch(self, indices: List[int], device):
        return self._tensors([self.data.train[i] for i in indices], device)

    @staticmethod
    def _tensors(pairs, device):
        src, src_lengths = pad_sources([s for s, _ in pairs])
        tgt_in, tgt_out = pad_targets([t for _, t in pairs])
        return src.to(device), src_lengths, tgt_in.to(device), tgt_out.to(device)

    def loss(self, model: nn.Module, batch, forcing: float = 1.0) -> Tuple[Tensor, BatchStats]:
        """Mean loss per target token; below forcing 1 each step feeds the model's own previous
        prediction with probability 1 - forcing (scheduled sampling, drawn from the global RNG,
        which checkpoints save, so a resumed run repeats the draws)."""
        src, src_lengths, tgt_in, tgt_out = batch
        logits = model(src, src_lengths, tgt_in, teacher_forcing_ratio=forcing)
        loss = F.cross_entropy(logits.float().flatten(0, 1), tgt_out.reshape(-1), ignore_index=PAD)
        real = tgt_out != PAD
        correct = int(((logits.detach().argmax(-1) == tgt_out) & real).sum())
        return loss, BatchStats(int(real.sum()), correct)

    def _pairs(self, split: str):
        if split == "all":
            return self.data.train + self.data.valid + self.data.test
        return getattr(self.data, split)

    def evaluate(self, model: nn.Module, runtime: Runtime, split: str = "valid",
                 batch_size: int = 500) -> Dict[str, float]:
        """Teacher-forced loss, ppl and token accuracy; exact match of greedy decoding; BLEU (word targets)."""
        pairs = self._pairs(split)[: self.eval_size]
        if not pairs:
            raise UserError(f"the {split} split has no pairs to evaluate")
        loss_sum, correct, tokens, exact = 0.0, 0, 0, 0
        hypotheses, references = [], []
        tgt_vocab = self.data.tgt_vocab
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            src, src_lengths, tgt_in, tgt_out = self._tensors(chunk, runtime.device)
            with runtime.autocast():
                logits = model(src, src_lengths, tgt_in)
                hyp = model.greedy_decode(src, src_lengths, max_len=self.max_len)
            real = tgt_out != PAD
            loss_sum += F.cross_entropy(logits.float().flatten(0, 1), tgt_out.reshape(-1), ignore_index=PAD,
                                        reduction="sum").item()
            correct += int(((logits.argmax(-1) == tgt_out) & real).sum())
            tokens += int(real.sum())
            for (_, target), ids in zip(chunk, hyp.tokens.tolist()):
                output, reference = tgt_vocab.decode(ids), tgt_vocab.decode(target)
                exact += output == reference
                hypotheses.append(output)
                references.append(reference)
        metrics = {"loss": loss_sum / tokens, "ppl": _ppl(loss_sum / tokens), "accuracy": correct / tokens,
                   "exact_match": exact / len(pairs)}
        if self.data.tgt_level == "word":
            metrics["bleu"], _ = bleu([" ".join(h) for h in hypotheses], [" ".join(r) for r in references],
                                      hypotheses, references)
        return metrics


TASKS = {"lm": LMTask, "seq2seq": Seq2SeqTask}
