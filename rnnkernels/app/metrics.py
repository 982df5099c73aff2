"""Corpus BLEU: sacrebleu's when it is installed, else the same formula over the model's own tokens."""
import math
from collections import Counter
from typing import List, Sequence, Tuple

HIGHER_IS_BETTER = {"accuracy", "exact_match", "bleu"}  # loss and ppl: lower is better


def corpus_bleu(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """BLEU in [0, 100] of token lists against one reference each (Papineni et al. 2002): the
    geometric mean of the clipped n-gram precisions for n = 1..max_n, times the brevity penalty,
    with sacrebleu's default "exp" smoothing of orders that match nothing."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    matches, totals = [0] * max_n, [0] * max_n
    hyp_length = ref_length = 0
    for hyp, ref in zip(hypotheses, references):
        hyp_length, ref_length = hyp_length + len(hyp), ref_length + len(ref)
        for n in range(1, max_n + 1):
            hyp_ngrams = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
            ref_ngrams = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
            matches[n - 1] += sum(min(count, ref_ngrams[g]) for g, count in hyp_ngrams.items())
            totals[n - 1] += max(0, len(hyp) - n + 1)
    if hyp_length == 0 or not any(matches) or not all(totals):  # as sacrebleu: no n-grams of some order, 0
        return 0.0
    log_precisions, smoothing = [], 1.0
    for n in range(max_n):
        if matches[n] == 0:
            smoothing *= 2
            log_precisions.append(math.log(1.0 / (smoothing * totals[n])))
        else:
            log_precisions.append(math.log(matches[n] / totals[n]))
    brevity = 1.0 if hyp_length >= ref_length else math.exp(1 - ref_length / hyp_length)
    return 100.0 * brevity * math.exp(sum(log_precisions) / max_n)


def bleu(hypotheses: List[str], references: List[str], hyp_tokens: List[List[str]],
         ref_tokens: List[List[str]]) -> Tuple[float, str]:
    """(BLEU, which implementation): sacrebleu's corpus_bleu on the texts when it is importable
    (its standard 13a tokenisation), else corpus_bleu on the model's word tokens."""
    try:
        import sacrebleu
    except ImportError:
        return corpus_bleu(hyp_tokens, ref_tokens), "built-in"
    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score), f"sacrebleu {sacrebleu.__version__}"


def bleu_implementation() -> str:
    try:
        import sacrebleu
    except ImportError:
        return "built-in BLEU over the word tokens (install sacrebleu for standard scores)"
    return f"sacrebleu {sacrebleu.__version__}"
