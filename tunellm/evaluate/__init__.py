"""Evaluation: task metrics found from the data, loss and perplexity, a per-task breakdown, reports."""

from tunellm.evaluate.compare import EvalRequest, evaluate_checkpoints
from tunellm.evaluate.dev_scorer import check_best_metric, dev_scorer_for, make_dev_scorer, read_dev_conversations
from tunellm.evaluate.metrics import METRICS, higher_is_better
from tunellm.evaluate.run import EvalResult, evaluate_model

__all__ = [
    "METRICS",
    "EvalRequest",
    "EvalResult",
    "check_best_metric",
    "dev_scorer_for",
    "evaluate_checkpoints",
    "evaluate_model",
    "higher_is_better",
    "make_dev_scorer",
    "read_dev_conversations",
]
