"""A metric: character-level F1 between output and reference, which needs no word segmenter (Chinese text).

In the package this file is `tunellm/evaluate/metrics/char_f1.py`, registered by a line in
`tunellm/evaluate/metrics/__init__.py` (whose order is the report's). Its keys can then be `train.best_metric`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from tunellm.evaluate.metrics.base import METRICS, Metric, mean
from tunellm.evaluate.tasks import EvalRow, normalize


def char_f1(pred: str, ref: str) -> float:
    """F1 over the multiset of characters, after `normalize` (NFKC, case, no spaces or punctuation)."""
    pred_chars, ref_chars = Counter(normalize(pred)), Counter(normalize(ref))
    common = sum((pred_chars & ref_chars).values())
    if not pred_chars or not ref_chars or not common:
        return float(pred_chars == ref_chars)  # both empty: a match
    precision, recall = common / sum(pred_chars.values()), common / sum(ref_chars.values())
    return 2 * precision * recall / (precision + recall)


class CharF1(Metric):
    name = "char_f1"
    higher_is_better = True
    keys = ("char_f1",)

    def applies(self, row: EvalRow) -> bool:
        return row.kind == "text"  # free-text answers; choice and extraction rows have their own metrics

    def score(self, preds: Sequence[str], refs: Sequence[str], rows: Sequence[EvalRow]) -> dict[str, float]:
        return {"char_f1": mean([char_f1(p, r) for p, r in zip(preds, refs, strict=True)])}


METRICS.register(CharF1.name)(CharF1())
