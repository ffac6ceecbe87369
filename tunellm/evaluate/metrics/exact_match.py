"""Exact match: the output equals the reference once both are stripped of surrounding whitespace."""

from __future__ import annotations

from collections.abc import Sequence

from tunellm.evaluate.metrics.base import METRICS, Metric, mean
from tunellm.evaluate.tasks import EvalRow


class ExactMatch(Metric):
    name = "exact_match"
    higher_is_better = True
    keys = ("exact_match",)

    def applies(self, row: EvalRow) -> bool:
        return row.kind != "none"

    def score(self, preds: Sequence[str], refs: Sequence[str], rows: Sequence[EvalRow]) -> dict[str, float]:
        return {"exact_match": mean([float(p.strip() == r.strip()) for p, r in zip(preds, refs, strict=True)])}


METRICS.register(ExactMatch.name)(ExactMatch())
