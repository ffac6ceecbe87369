"""BLEU-4 of free-text rows, per row over characters, then averaged: LLaMA-Factory's definition.

LLaMA-Factory scores `sentence_bleu([list(label)], list(pred), smoothing_function=method3)` from nltk;
this is the same computation written out: modified n-gram precisions p1..p4 (clipped counts over
hypothesis n-grams, denominator at least 1), NIST geometric smoothing (the k-th precision with no match
becomes 1 / (2^k * its denominator)), 0 when no character matches, brevity penalty exp(1 - r/c) when the
output is shorter, and the geometric mean with weights 1/4. Values are in [0, 1] (LLaMA-Factory prints
them x100).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from tunellm.evaluate.metrics.base import METRICS, Metric, mean
from tunellm.evaluate.tasks import EvalRow

ORDER = 4


def ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def sentence_bleu(reference: Sequence[str], hypothesis: Sequence[str]) -> float:
    """BLEU-4 of one hypothesis against one reference (token lists), smoothed as above."""
    precisions: list[tuple[int, int]] = []
    for n in range(1, ORDER + 1):
        counts, ref_counts = ngrams(hypothesis, n), ngrams(reference, n)
        matched = sum(min(count, ref_counts[gram]) for gram, count in counts.items())
        precisions.append((matched, max(1, sum(counts.values()))))
    if precisions[0][0] == 0:
        return 0.0
    smoothed, k = [], 0
    for matched, total in precisions:
        if matched == 0:
            k += 1
            smoothed.append(1 / (2**k * total))
        else:
            smoothed.append(matched / total)
    c, r = len(hypothesis), len(reference)
    penalty = 1.0 if c > r else math.exp(1 - r / c)
    return penalty * math.exp(math.fsum(math.log(p) / ORDER for p in smoothed))


class Bleu(Metric):
    name = "bleu"
    higher_is_better = True
    keys = ("bleu4",)

    def applies(self, row: EvalRow) -> bool:
        return row.kind == "text"

    def score(self, preds: Sequence[str], refs: Sequence[str], rows: Sequence[EvalRow]) -> dict[str, float]:
        return {"bleu4": mean([sentence_bleu(list(r), list(p)) for p, r in zip(preds, refs, strict=True)])}


METRICS.register(Bleu.name)(Bleu())
