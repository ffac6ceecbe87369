"""The loss of a batch, one module for training and evaluation: per trained token, then summed.

Two paths give the same numbers:
- `reference`: the model's own forward, full-vocabulary logits of every position, fp32 cross-entropy.
- `chunked`: the model body to hidden states, only the positions whose (shifted) label is trained are projected to
  the vocabulary, in chunks of `CHUNK` positions, each chunk's logits recomputed in the backward
  (activation checkpointing) instead of kept. The fp32 logits of the whole batch never exist, and masked prompt
  tokens cost no head compute.
`chunked` falls back to `reference` where the head is not a plain projection of the last hidden state
(`chunk_blocker` says why): a LoRA'd or saved-as-module head, logit soft-capping or scaling, prompt learning
(peft prefixes ride on the wrapper's forward), a DDP wrapper (its forward does the gradient sync), an FSDP-sharded
model (its top-level forward gathers the weights), remote code.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

IGNORE = -100
CHUNK = 1024  # positions per head chunk: 1,024 x 49,152 fp32 logits are 200 MB
LossPath = Literal["chunked", "reference"]
# config fields that change logits after the head; a model whose config sets one keeps the reference path
LOGIT_CHANGERS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def targets_of(labels: torch.Tensor) -> torch.Tensor:
    """The label each position predicts: the next one's; the last position of a row predicts nothing."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE)


def trained_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens that carry loss: the first position predicts nothing (labels are shifted inside the loss)."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What the model reads: ids, plus the attention mask (padded batches) or position ids (packed batches)."""
    keys = ("input_ids", "attention_mask", "position_ids")
    return {key: batch[key] for key in keys if key in batch} | {"use_cache": False}


def causal_lm(model: Any) -> Any:
    """The transformers model under a peft wrapper (LoRA layers stay in it), else the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def chunk_blocker(model: Any) -> str | None:
    """Why the chunked path cannot serve `model` (None: it can)."""
    if isinstance(model, nn.parallel.DistributedDataParallel) or hasattr(model, "module"):
        return "the model is wrapped for data parallelism, whose forward syncs the gradients"
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        return "the model is sharded (FSDP), whose top-level forward gathers the weights"
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return "prompt learning adds its prefix in the peft wrapper's forward"
    lm = causal_lm(model)
    if not type(lm).__module__.startswith("transformers.models."):
        return f"{type(lm).__name__} is not a transformers model (remote code)"
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if type(head) is not nn.Linear:
        return f"its output head is a {type(head).__name__}, not a plain Linear"
    if head._forward_hooks or head._forward_pre_hooks:
        return "its output head has forward hooks, which a direct projection would skip"
    if lm.base_model is lm:
        return "it has no separate body to take hidden states from"
    changers = [name for name in LOGIT_CHANGERS if getattr(lm.config, name, None) not in (None, 1, 1.0)]
    if changers:
        return f"its config changes the logits after the head ({', '.join(changers)})"
    return None


def _head_loss(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: Any) -> torch.Tensor:
    return F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, reduction="none")


def token_losses(
    model: Any, batch: dict[str, torch.Tensor], path: LossPath = "chunked", chunk: int = CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 loss of each trained token, its flat index into the batch's positions), by `path`.

    Flat index i is row i // width, position i % width of the position that predicts the token.
    """
    targets = targets_of(batch["labels"]).flatten()
    index = (targets != IGNORE).nonzero().squeeze(1)
    if path == "reference" or chunk_blocker(model) is not None:
        logits = model(**model_inputs(batch)).logits
        losses = F.cross_entropy(logits.flatten(0, 1).float(), targets, ignore_index=IGNORE, reduction="none")
        return losses[index], index
    lm = causal_lm(model)
    head = lm.get_output_embeddings()
    hidden = lm.base_model(**model_inputs(batch)).last_hidden_state
    hidden, targets = hidden.flatten(0, 1)[index], targets[index]
    pieces = []
    for start in range(0, len(index), chunk):
        args = (hidden[start : start + chunk], targets[start : start + chunk], head.weight, head.bias)
        keep_nothing = torch.is_grad_enabled() and hidden.requires_grad
        pieces.append(checkpoint(_head_loss, *args, use_reentrant=False) if keep_nothing else _head_loss(*args))
    losses = torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)
    return losses, index


def token_loss_sum(
    model: Any, batch: dict[str, torch.Tensor], path: LossPath = "chunked", chunk: int = CHUNK
) -> tuple[torch.Tensor, int]:
    """(cross-entropy summed over trained tokens in fp32, trained tokens)."""
    losses, index = token_losses(model, batch, path, chunk)
    return losses.sum(), len(index)


def row_loss_sums(
    model: Any, batch: dict[str, torch.Tensor], path: LossPath = "chunked"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed token loss, trained tokens) per row of a padded batch."""
    losses, index = token_losses(model, batch, path)
    rows, width = batch["labels"].shape
    row = index // width
    sums = torch.zeros(rows, dtype=torch.float32, device=losses.device).index_add_(0, row, losses.detach())
    return sums, torch.bincount(row, minlength=rows)
