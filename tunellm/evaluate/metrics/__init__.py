"""Task metrics, one file each, registered by importing it here; the report lists their keys in this order."""

# isort: off
from tunellm.evaluate.metrics import perplexity  # noqa: F401
from tunellm.evaluate.metrics import exact_match  # noqa: F401
from tunellm.evaluate.metrics import choice_accuracy  # noqa: F401
from tunellm.evaluate.metrics import ie_f1  # noqa: F401
from tunellm.evaluate.metrics import bleu  # noqa: F401
from tunellm.evaluate.metrics import rouge  # noqa: F401
# isort: on

from collections.abc import Sequence
from typing import Any

from tunellm.errors import ConfigError
from tunellm.evaluate.metrics.base import METRICS, Metric
from tunellm.evaluate.tasks import EvalRow
from tunellm.registry import did_you_mean

LOSS_KEYS = ("loss", "ppl")


def metric_keys() -> list[str]:
    return [key for metric in METRICS for key in metric.keys]


def metric_of(key: str, field: str = "train.best_metric") -> Metric:
    """The metric reporting `key`; an `eval_` prefix (training's eval_loss) is ignored."""
    name = key.removeprefix("eval_")
    for metric in METRICS:
        if name in metric.keys:
            return metric
    keys = ["eval_loss", *metric_keys()]
    raise ConfigError(
        f"unknown metric '{key}'", field=field, expected="one of " + ", ".join(keys), hint=did_you_mean(key, keys)
    )


def higher_is_better(key: str) -> bool:
    return metric_of(key).higher_is_better


def score_rows(rows: Sequence[EvalRow]) -> dict[str, Any]:
    """Every metric over the rows it applies to, plus `rows` and `scored` (rows behind each metric)."""
    result: dict[str, Any] = {"rows": len(rows)}
    scored: dict[str, int] = {}
    for metric in METRICS:
        chosen = [row for row in rows if metric.applies(row)]
        if chosen:
            preds = [row.output for row in chosen]
            refs = [row.reference or "" for row in chosen]
            result.update(metric.score(preds, refs, chosen))
            scored[metric.name] = len(chosen)
    result["scored"] = scored
    return result


__all__ = ["LOSS_KEYS", "METRICS", "Metric", "higher_is_better", "metric_keys", "metric_of", "score_rows"]
