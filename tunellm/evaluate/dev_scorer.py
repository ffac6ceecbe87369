"""Task metrics during training: at each eval step, generate on up to `eval.max_rows` dev rows and score them.

`fit(..., dev_scorer=make_dev_scorer(...))` merges the returned metrics into the eval entry beside
eval_loss, so `train.best_metric` may be a task metric (accuracy, ie_f1, rougeL, ...). Rows are taken
spread evenly over the dev set and are the same at every step, so steps compare.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from tunellm.config.schema import RunConfig
from tunellm.data.prepare import read_data
from tunellm.data.record import Conversation
from tunellm.data.sources import held_out_records
from tunellm.data.templates import Template
from tunellm.data.tokenize import TokenizeOptions
from tunellm.errors import ConfigError
from tunellm.evaluate.metrics import LOSS_KEYS, metric_of, score_rows
from tunellm.evaluate.run import hf_generator, pick_rows, score_conversations
from tunellm.infer.generate import SamplingOptions

DevScorer = Callable[[Any], dict[str, float]]
log = logging.getLogger(__name__)


def check_best_metric(config: RunConfig) -> None:
    """`train.best_metric` must be eval_loss or a key some metric reports; cheap, so run it before loading."""
    key = config.train.best_metric
    metric_of(key)
    if key.removeprefix("eval_") in LOSS_KEYS and key != "eval_loss":
        raise ConfigError(
            f"best_metric '{key}' is not computed during training",
            field="train.best_metric",
            hint="use eval_loss: perplexity ranks checkpoints as the loss does",
        )


def wants_task_metrics(config: RunConfig) -> bool:
    if config.eval.task_metrics is not None:
        return config.eval.task_metrics
    return config.train.best_metric != "eval_loss"


def read_dev_conversations(config: RunConfig) -> list[Conversation]:
    """The records of `data.dev`; without dev files, the `data.dev_split` share of the training records.

    The same records `tunellm train` holds out for the dev loss (`held_out_records`, drawn over records read).
    """
    if config.data.dev:
        return read_data(config.data.dev, config.data).conversations
    if config.data.dev_split <= 0 or not config.data.train:
        return []
    records = read_data(config.data.train, config.data).conversations
    return [records[i] for i in held_out_records(len(records), config.data.dev_split, config.train.seed).tolist()]


def make_dev_scorer(
    config: RunConfig, tokenizer: Any, template: Template, dev_conversations: Sequence[Conversation]
) -> DevScorer | None:
    """A callable model -> {metric: value} for `fit`, or None when no task metric is wanted (or no dev rows)."""
    check_best_metric(config)
    if not wants_task_metrics(config):
        return None
    rows = pick_rows([c for c in dev_conversations if c.has_response], config.eval.max_rows)
    if not rows:
        if config.train.best_metric != "eval_loss":
            raise ConfigError(
                f"best_metric '{config.train.best_metric}' needs dev records with answers",
                field="data.dev",
                hint="give dev files (data.dev) or set data.dev_split",
            )
        return None
    options = SamplingOptions(max_new_tokens=config.generate.max_new_tokens)  # greedy: a steady best checkpoint
    tokenize_options = TokenizeOptions.from_config(config.data)
    batch_size = config.train.per_device_eval_batch_size

    def score(model: Any) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            generator = split_over_processes(hf_generator(model, tokenizer, template, batch_size))
            scored, _ = score_conversations(rows, generator, options, tokenize_options, group_by="none")
        finally:
            model.train(was_training)
        scores = {k: v for k, v in score_rows(scored).items() if k not in ("rows", "scored")}
        if scores.get("beats_majority") == 0.0:
            log.warning(
                "dev accuracy %.4f does not beat always answering the most frequent label (%.4f)",
                scores["accuracy"],
                scores["majority_accuracy"],
            )
        return scores

    return score


def split_over_processes(generator: Any) -> Any:
    """`generator` run by every process of a multi-process run on its share of the prompts (every world-th), the
    generations gathered back into prompt order on all of them: no process repeats another's work."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return generator
    rank, world = dist.get_rank(), dist.get_world_size()

    def run(prompts: Sequence[Conversation], *args: Any) -> list[Any]:
        mine = generator(list(prompts)[rank::world], *args)
        shares: list[Any] = [None] * world
        dist.all_gather_object(shares, mine)
        merged: list[Any] = [None] * len(prompts)
        for owner, share in enumerate(shares):
            merged[owner::world] = share
        return merged

    return run


def dev_scorer_for(config: RunConfig, tokenizer: Any, template: Template) -> DevScorer | None:
    """`make_dev_scorer` on `read_dev_conversations(config)`; reads nothing when no task metric is wanted."""
    check_best_metric(config)
    if not wants_task_metrics(config):
        return None
    return make_dev_scorer(config, tokenizer, template, read_dev_conversations(config))
