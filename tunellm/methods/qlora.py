"""QLoRA: the base model loaded in 4-bit NF4 (or 8-bit) by bitsandbytes, LoRA adapters on top in higher
precision, and by default bitsandbytes' paged 8-bit AdamW. Needs CUDA and bitsandbytes, checked before
anything loads (bitsandbytes also runs on the CPU, which the tests use with the check lifted). The adapter
is a plain LoRA adapter: chat, eval and merge load the base unquantized.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

from torch import nn

from tunellm.config.methods import QLoraMethod
from tunellm.errors import ConfigError
from tunellm.methods import lora
from tunellm.methods.base import METHODS


def check(config: Any) -> None:
    """Stop before data or weights load when this machine cannot run QLoRA (`config` is the RunConfig)."""
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            "method qlora needs a CUDA GPU: a 4-bit base saves GPU memory; on the CPU it only slows training",
            field="method.name",
            hint="on this machine use method=lora (same adapter, unquantized base)",
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            "method qlora needs the bitsandbytes package, which is not installed",
            field="method.name",
            hint="pip install 'tunellm[qlora]'  (or: pip install bitsandbytes)",
        )


def load_options(method: QLoraMethod) -> dict[str, Any]:
    """`from_pretrained` arguments that quantize the base weights as they load."""
    import torch
    from transformers import BitsAndBytesConfig

    compute = getattr(torch, method.compute_dtype)
    if method.bits == 8:
        quantization = BitsAndBytesConfig(load_in_8bit=True)
    else:
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=method.quant_type,
            bnb_4bit_use_double_quant=method.double_quant,
            bnb_4bit_compute_dtype=compute,
        )
    return {"quantization_config": quantization, "dtype": compute}


def apply(model: nn.Module, method: QLoraMethod, family: Any) -> nn.Module:
    """Make the quantized model trainable (norms in fp32, input grads), then add LoRA as `lora` does."""
    from peft import prepare_model_for_kbit_training

    # activation checkpointing stays train.gradient_checkpointing's choice, as for every method
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return lora.apply(model, method, family)


def optimizer(groups: list[dict[str, Any]], method: QLoraMethod, train: Any) -> Any:
    import torch

    if method.optim == "adamw":
        return torch.optim.AdamW(groups, lr=train.learning_rate)
    import bitsandbytes as bnb

    kind = bnb.optim.PagedAdamW8bit if method.optim == "paged_adamw_8bit" else bnb.optim.AdamW8bit
    return kind(groups, lr=train.learning_rate)


Config = QLoraMethod
supports_merge = True
param_groups = lora.param_groups
save = lora.save
load = lora.load
restore = lora.restore
merge = lora.merge
METHODS.register("qlora")(sys.modules[__name__])
