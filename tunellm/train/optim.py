"""Optimizer, learning-rate schedule and the step plan (how many optimizer steps a run makes)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tunellm.config.schema import RunConfig, TrainConfig
from tunellm.errors import ModelError
from tunellm.methods.base import hook


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two AdamW groups: matrices decay; biases and norm weights (1-D) do not."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or name.endswith(".bias") else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def build_optimizer(
    model: torch.nn.Module, config: TrainConfig, groups: list[dict[str, Any]] | None = None
) -> torch.optim.AdamW:
    """AdamW over `groups` (a method's own, e.g. LoRA+), or the default decay/no-decay split."""
    groups = groups if groups is not None else param_groups(model, config.weight_decay)
    if not groups:
        raise ModelError("the model has no trainable parameters", hint="apply a tuning method (e.g. lora) before fit")
    return torch.optim.AdamW(groups, lr=config.learning_rate)


def method_optimizer(model: Any, config: RunConfig | TrainConfig, method: Any | None) -> Any:
    """AdamW, unless the method brings its own groups (LoRA+) or optimizer (QLoRA's paged 8-bit AdamW)."""
    cfg = config.train if isinstance(config, RunConfig) else config
    options = config.method if isinstance(config, RunConfig) else None
    make_groups, make_optimizer = hook(method, "param_groups"), hook(method, "optimizer")
    groups = make_groups(model, options, cfg) if make_groups and options is not None else None
    if make_optimizer and options is not None:
        return make_optimizer(groups or param_groups(model, cfg.weight_decay), options, cfg)
    return build_optimizer(model, cfg, groups)


def warmup_steps(config: TrainConfig, total_steps: int) -> int:
    return config.warmup_steps if config.warmup_steps > 0 else math.ceil(config.warmup_ratio * total_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int) -> Any:
    """transformers' schedule of that name; the first step runs at lr 0 when there is warmup."""
    from transformers import get_scheduler

    return get_scheduler(
        config.lr_scheduler_type,
        optimizer,
        num_warmup_steps=warmup_steps(config, total_steps),
        num_training_steps=total_steps,
    )


@dataclass(frozen=True)
class StepPlan:
    """Micro-batches of the first epoch (per process) and optimizer steps; an epoch's last step may take fewer
    micro-batches. Packed epochs may differ in micro-batches, so a partial last epoch counts its own."""

    micro_batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int

    @classmethod
    def make(cls, config: TrainConfig, micro_batches: Callable[[int], int]) -> StepPlan:
        """`micro_batches(epoch)`: this process's micro-batches in that epoch."""

        def steps(epoch: int) -> int:
            return math.ceil(micro_batches(epoch) / config.gradient_accumulation_steps)

        if config.max_steps > 0:
            total = config.max_steps
        else:
            whole = int(config.num_train_epochs)
            total = sum(steps(epoch) for epoch in range(whole))
            if config.num_train_epochs > whole:
                total += math.ceil((config.num_train_epochs - whole) * steps(whole))
        return cls(micro_batches(0), steps(0), max(total, 1))
