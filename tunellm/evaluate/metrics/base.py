"""The metric contract: a name, a direction, the keys it reports, which rows it scores, and `score`.

A metric scores only the rows it `applies` to (a choice task's rows for accuracy, free text for BLEU),
so each number is over the rows where it means something; the report says how many those were.
"""

from __future__ import annotations

from collections.abc import Sequence

from tunellm.evaluate.tasks import EvalRow
from tunellm.registry import Registry


class Metric:
    name: str = ""
    higher_is_better: bool = True
    keys: tuple[str, ...] = ()  # every key `score` returns, in report order

    def applies(self, row: EvalRow) -> bool:
        raise NotImplementedError

    def score(self, preds: Sequence[str], refs: Sequence[str], rows: Sequence[EvalRow]) -> dict[str, float]:
        """`preds[i]` and `refs[i]` are `rows[i].output` and `rows[i].reference`; rows carry the record's extra."""
        raise NotImplementedError


METRICS: Registry[Metric] = Registry("metric")


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
