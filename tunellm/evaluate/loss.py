"""Per-row teacher-forced loss over the reference's trained tokens, tokenized exactly as training tokenizes.

Rows are summed, not averaged, so any group's loss is its tokens' mean, as training's eval_loss is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from tunellm.data.record import Conversation
from tunellm.data.templates import Template
from tunellm.data.tokenize import TokenizeOptions, tokenize_conversations
from tunellm.infer.generate import model_device
from tunellm.train.loop import collate
from tunellm.train.loss import LossPath, row_loss_sums


def tokenized_rows(
    conversations: Sequence[Conversation], tokenizer: Any, template: Template, options: TokenizeOptions
) -> list[dict[str, np.ndarray] | None]:
    """Each conversation's training sample, None where it has no trained token (tokenization excludes it)."""
    dataset = tokenize_conversations(conversations, tokenizer, template, options)
    excluded = set(dataset.report.fully_masked_sources)
    kept = [i for i, c in enumerate(conversations) if str(c.source) not in excluded]
    rows: list[dict[str, np.ndarray] | None] = [None] * len(conversations)
    if len(kept) == len(dataset):
        for sample, index in enumerate(kept):
            rows[index] = dataset[sample]
        return rows
    for index, conversation in enumerate(conversations):  # sources repeat (a file given twice): one at a time
        one = tokenize_conversations([conversation], tokenizer, template, options)
        rows[index] = one[0] if len(one) else None
    return rows


@torch.no_grad()
def row_losses(
    model: Any,
    tokenizer: Any,
    template: Template,
    conversations: Sequence[Conversation],
    options: TokenizeOptions | None = None,
    *,
    batch_size: int = 8,
    loss: LossPath = "chunked",
) -> list[tuple[float, int]]:
    """(summed token loss, trained tokens) per conversation; (0.0, 0) where nothing is trained."""
    samples = tokenized_rows(conversations, tokenizer, template, options or TokenizeOptions())
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = model_device(model)
    present = sorted((i for i, s in enumerate(samples) if s is not None), key=lambda i: len(samples[i]["input_ids"]))
    result = [(0.0, 0)] * len(samples)
    for start in range(0, len(present), batch_size):
        chosen = present[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate([samples[i] for i in chosen], pad_id).items()}
        sums, tokens = row_loss_sums(model, batch, loss)
        for row, index in enumerate(chosen):
            result[index] = (float(sums[row]), int(tokens[row]))
    return result
