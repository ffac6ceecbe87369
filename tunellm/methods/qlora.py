"""QLoRA: the base model loaded in 4-bit NF4 (or 8-bit) by bitsandbytes, LoRA adapters on top in higher
precision, and by default bitsandbytes' paged 8-bit AdamW. Needs CUDA and bitsandbytes, checked before
anything loads (bitsandbytes also runs on the CPU, which the tests use with the check lifted). The adapter
is a plain LoRA adapter: chat, eval and merge load the base unquantized.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from tunellm.errors import ConfigError
from tunellm.methods import lora
from tunellm.methods.base import METHODS, Variant
from tunellm.methods.lora import LoraMethod

if TYPE_CHECKING:
    from torch import nn


class QLoraMethod(LoraMethod):
    name: Literal["qlora"] = "qlora"  # type: ignore[assignment]
    bits: Literal[4, 8] = Field(4, description="QLoRA: base weights quantized to 4-bit or 8-bit by bitsandbytes")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="QLoRA 4-bit data type")
    double_quant: bool = Field(True, description="QLoRA 4-bit: also quantize the quantization constants")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="QLoRA: dtype the dequantized weights compute in"
    )
    optim: Literal["adamw", "paged_adamw_8bit", "adamw_8bit"] = Field(
        "paged_adamw_8bit", description="QLoRA optimizer: bitsandbytes' paged 8-bit AdamW by default"
    )


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


def contract_variants() -> dict[str, Variant]:
    """The adapter side on an unquantized base with plain AdamW: the contract runs on the CPU without bitsandbytes
    (the quantized path is tested through `tunellm train` in tests/contracts/test_methods.py)."""
    options = QLoraMethod(r=4, lora_alpha=8, lora_dropout=0.0, optim="adamw")
    return {"qlora": Variant(options, lambda name: "lora_" in name)}


Config = QLoraMethod
supports_merge = True
uses_bitsandbytes = True
weight_files = lora.weight_files
param_groups = lora.param_groups
save = lora.save
load = lora.load
restore = lora.restore
merge = lora.merge
METHODS.register("qlora")(sys.modules[__name__])
