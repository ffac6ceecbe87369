"""ROUGE-1/2/L F1 of free-text rows over jieba words, per row, then averaged: LLaMA-Factory's definition.

LLaMA-Factory joins `jieba.cut` words with spaces and scores them with the `rouge-chinese` package;
this is the same computation: words are jieba's pieces without whitespace; ROUGE-N counts distinct
n-grams (P = |hyp ∩ ref| / |hyp|, R = |hyp ∩ ref| / |ref|, over n-gram sets), ROUGE-L uses the longest
common subsequence of the word lists (P = LCS / hyp words, R = LCS / ref words); F = 2PR / (P + R + 1e-8)
as the package computes it. A row whose output or reference has no word scores 0. Values are in [0, 1].
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache

from tunellm.evaluate.metrics.base import METRICS, Metric, mean
from tunellm.evaluate.tasks import EvalRow


@lru_cache(maxsize=1)
def _jieba():  # type: ignore[no-untyped-def]
    import jieba

    jieba.setLogLevel(logging.WARNING)  # it logs "Building prefix dict..." on first use
    return jieba


def words(text: str) -> list[str]:
    return " ".join(_jieba().cut(text)).split()


def f_score(overlap: int, hyp: int, ref: int) -> float:
    precision = overlap / hyp if hyp else 0.0
    recall = overlap / ref if ref else 0.0
    return 2 * precision * recall / (precision + recall + 1e-8)


def rouge_n(hyp: Sequence[str], ref: Sequence[str], n: int) -> float:
    hyp_grams = {tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1)}
    ref_grams = {tuple(ref[i : i + n]) for i in range(len(ref) - n + 1)}
    return f_score(len(hyp_grams & ref_grams), len(hyp_grams), len(ref_grams))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(hyp: Sequence[str], ref: Sequence[str]) -> float:
    return f_score(lcs_length(hyp, ref), len(hyp), len(ref))


def rouge_scores(hyp: Sequence[str], ref: Sequence[str]) -> tuple[float, float, float]:
    if not hyp or not ref:
        return 0.0, 0.0, 0.0
    return rouge_n(hyp, ref, 1), rouge_n(hyp, ref, 2), rouge_l(hyp, ref)


class Rouge(Metric):
    name = "rouge"
    higher_is_better = True
    keys = ("rouge1", "rouge2", "rougeL")

    def applies(self, row: EvalRow) -> bool:
        return row.kind == "text"

    def score(self, preds: Sequence[str], refs: Sequence[str], rows: Sequence[EvalRow]) -> dict[str, float]:
        scores = [rouge_scores(words(p), words(r)) for p, r in zip(preds, refs, strict=True)]
        return {key: mean([s[i] for s in scores]) for i, key in enumerate(self.keys)}


METRICS.register(Rouge.name)(Rouge())
