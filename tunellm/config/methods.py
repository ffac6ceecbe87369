"""Options of each tuning method, one class per method, joined in the `Method` union on `name`.

They live here, not beside each method's code in `tunellm/methods/`, because a config must load without
torch and imports point down the stages; each method module names its class as `Config`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AliasChoices, Field, model_validator

from tunellm.config.section import Section


class LoraMethod(Section):
    name: Literal["lora"] = "lora"
    r: int = Field(8, gt=0, validation_alias=AliasChoices("r", "lora_rank"), description="LoRA rank")
    lora_alpha: float = Field(16, gt=0, description="LoRA scaling numerator (scale = lora_alpha / r)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: str | list[str] = Field(
        "auto", description="modules to adapt: auto (the family's default), all-linear, or a list of names"
    )
    modules_to_save: list[str] = Field(default_factory=list, description="modules trained in full beside the adapter")
    use_dora: bool = Field(False, description="DoRA: learn each weight's magnitude apart from its LoRA direction")
    use_rslora: bool = Field(False, description="rsLoRA: scale by lora_alpha / sqrt(r), steadier at high rank")
    init_lora_weights: Literal["default", "gaussian", "pissa"] = Field(
        "default",
        description="adapter init; pissa starts from the weights' principal singular vectors (saved as plain LoRA)",
    )
    pissa_niter: int | None = Field(
        16, ge=1, description="PiSSA: fast randomized-SVD iterations; empty for an exact SVD (slow on big models)"
    )
    loraplus_lr_ratio: float | None = Field(
        None, gt=0, description="LoRA+: learning rate of the B matrices = learning_rate x this (the paper uses 16)"
    )

    @model_validator(mode="after")
    def pissa_without_dora(self) -> LoraMethod:
        if self.init_lora_weights == "pissa" and self.use_dora:
            raise ValueError("PiSSA init and DoRA cannot be combined (peft converts PiSSA to LoRA, not to DoRA)")
        return self


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


class PTuningV2Method(Section):
    name: Literal["ptuning_v2"] = "ptuning_v2"
    pre_seq_len: int = Field(128, gt=0, description="P-Tuning v2: trained prefix length (key/value pairs per layer)")
    prefix_projection: bool = Field(False, description="P-Tuning v2: produce the prefix through a 2-layer MLP")
    prefix_hidden_size: int = Field(512, gt=0, description="P-Tuning v2: hidden size of that MLP")


class FreezeMethod(Section):
    name: Literal["freeze"] = "freeze"
    trainable_layers: int = Field(
        2, ge=0, description="freeze: train the last N decoder layers in full (0 with trainable_modules only)"
    )
    trainable_modules: list[str] = Field(
        default_factory=list,
        description="freeze: also train parameters whose name contains any of these (e.g. mlp, lm_head, norm)",
    )

    @model_validator(mode="after")
    def trains_something(self) -> FreezeMethod:
        if self.trainable_layers == 0 and not self.trainable_modules:
            raise ValueError("freeze with trainable_layers=0 and no trainable_modules would train nothing")
        return self


class FullMethod(Section):
    name: Literal["full"] = "full"
    pure_bf16: bool = Field(
        False, description="full: weights, gradients and optimizer state in bf16, no fp32 copy (half the memory)"
    )


Method = Annotated[LoraMethod | QLoraMethod | PTuningV2Method | FreezeMethod | FullMethod, Field(discriminator="name")]
METHOD_CONFIGS: tuple[type[Section], ...] = (LoraMethod, QLoraMethod, PTuningV2Method, FreezeMethod, FullMethod)
