"""Full fine-tuning: every parameter trains; a checkpoint is a whole transformers model folder.

Without `pure_bf16` the weights train in fp32 (a model loaded in bf16/fp16, as `dtype: auto` does on a GPU,
is cast up), so small updates are not rounded away; `train.bf16=true` adds bf16 autocast for speed.
`pure_bf16` casts the weights to bf16, so gradients and AdamW state are bf16 too: half the memory, at the cost
of updates rounded to bf16.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from tunellm.config.section import Section
from tunellm.methods.base import METHODS, Variant, restore_tensors

if TYPE_CHECKING:
    from torch import nn


class FullMethod(Section):
    name: Literal["full"] = "full"
    pure_bf16: bool = Field(
        False, description="full: weights, gradients and optimizer state in bf16, no fp32 copy (half the memory)"
    )


def apply(model: nn.Module, method: FullMethod, family: Any) -> nn.Module:
    import torch

    if method.pure_bf16:
        model.to(torch.bfloat16)
    elif any(p.dtype in (torch.bfloat16, torch.float16) for p in model.parameters()):
        model.to(torch.float32)
    model.requires_grad_(True)
    return model


def save(model: nn.Module, folder: str | Path) -> None:
    """config.json, generation_config.json and model.safetensors: the checkpoint is a model of its own."""
    model.save_pretrained(str(folder))


def load(base_model: nn.Module, folder: str | Path, *, trainable: bool = False) -> nn.Module:
    """The checkpoint's weights in `base_model` (inference usually loads the checkpoint folder directly)."""
    restore_tensors(base_model, Path(folder))
    base_model.requires_grad_(trainable)
    return base_model


def merge(model: nn.Module) -> nn.Module:
    return model


def contract_variants() -> dict[str, Variant]:
    return {
        "full": Variant(FullMethod(), lambda name: True),
        "full_pure_bf16": Variant(FullMethod(pure_bf16=True), lambda name: True, tolerance=2e-2),  # bf16 weights
    }


Config = FullMethod
supports_merge = True
weight_files = ("model.safetensors", "model.safetensors.index.json")  # one file, or the index of a sharded one
METHODS.register("full")(sys.modules[__name__])
