"""Loss and perplexity over the reference's trained tokens, teacher-forced.

The loss is the mean over all scored tokens of the group (not a mean of row means), as training's
eval_loss is; ppl = exp(loss). The per-row sums come from `tunellm.evaluate.loss.row_losses`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tunellm.evaluate.metrics.base import METRICS, Metric
from tunellm.evaluate.tasks import EvalRow

MAX_LOG = 700.0  # exp(700) is still a float; a larger loss would make ppl inf, which JSON cannot hold


class Perplexity(Metric):
    name = "perplexity"
    higher_is_better = False
    keys = ("loss", "ppl")

    def applies(self, row: EvalRow) -> bool:
        return row.tokens > 0

    def score(self, preds: Sequence[str], refs: Sequence[str], rows: Sequence[EvalRow]) -> dict[str, float]:
        loss = sum(row.loss_sum for row in rows) / sum(row.tokens for row in rows)
        return {"loss": loss, "ppl": math.exp(min(loss, MAX_LOG))}


METRICS.register(Perplexity.name)(Perplexity())
