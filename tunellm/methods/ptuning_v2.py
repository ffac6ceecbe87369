"""P-Tuning v2 through peft's prefix tuning: `pre_seq_len` trained key/value vectors in every layer's attention,
optionally produced by a 2-layer MLP (prefix_projection), as ChatGLM-6B's ptuning scripts trained them.

The base model stays frozen and unchanged; only the prefix is saved. With prefix_projection peft saves the
prefix as the MLP outputs it (all inference needs), so the MLP itself is kept under state/ for resume. A prefix
cannot be folded into the weights, so it is not mergeable.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from tunellm.config.section import Section
from tunellm.errors import ConfigError
from tunellm.methods.base import METHODS, Variant, check_fits, quiet_peft, restore_peft

if TYPE_CHECKING:
    from peft import PeftModel
    from torch import nn

    from tunellm.models.families.base import Family


class PTuningV2Method(Section):
    name: Literal["ptuning_v2"] = "ptuning_v2"
    pre_seq_len: int = Field(128, gt=0, description="P-Tuning v2: trained prefix length (key/value pairs per layer)")
    prefix_projection: bool = Field(False, description="P-Tuning v2: produce the prefix through a 2-layer MLP")
    prefix_hidden_size: int = Field(512, gt=0, description="P-Tuning v2: hidden size of that MLP")


ENCODER_STATE = Path("state") / "ptuning" / "prompt_encoder.safetensors"


def key_value_heads(config: Any) -> tuple[int, int] | None:
    """(key/value heads, head size) for grouped- or multi-query attention that peft cannot read itself."""
    if getattr(config, "model_type", None) != "falcon":
        return None
    heads = config.num_attention_heads
    if config.new_decoder_architecture:
        return config.num_kv_heads, config.hidden_size // heads
    kv_heads = 1 if config.multi_query else heads
    return kv_heads, config.hidden_size // heads


def check(config: Any) -> None:
    """Activation checkpointing drops the KV cache inside checkpointed layers (transformers 5), and with it the
    prefix, so the two cannot be combined."""
    if config.train.gradient_checkpointing:
        raise ConfigError(
            "ptuning_v2 cannot run with gradient checkpointing: checkpointed layers drop the prefix cache",
            field="train.gradient_checkpointing",
            hint="set train.gradient_checkpointing=false, or use method=lora to save memory",
        )


def apply(model: nn.Module, method: PTuningV2Method, family: Family) -> PeftModel:
    """Freeze the model and add a trained prefix of `pre_seq_len` positions to every attention layer."""
    from peft import PrefixTuningConfig, get_peft_model

    if type(model).__module__.split(".")[0] == "transformers_modules":  # the checkpoint's own code
        raise ConfigError(
            f"ptuning_v2 does not support the {family.name} checkpoint's remote code: it handles no prefix cache",
            field="method.name",
            hint="ChatGLM-6B/2/3 and Baichuan-7B run natively when model.trust_remote_code is not set, and "
            "ptuning_v2 works there; otherwise use method=lora",
        )
    options: dict[str, Any] = {}
    shape = key_value_heads(model.config)
    if shape is not None:
        options = {"num_attention_heads": shape[0], "token_dim": shape[0] * shape[1]}
    config = PrefixTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=method.pre_seq_len,
        prefix_projection=method.prefix_projection,
        encoder_hidden_size=method.prefix_hidden_size,
        **options,
    )
    with quiet_peft():
        return get_peft_model(model, config)


def save(model: PeftModel, folder: str | Path) -> None:
    """adapter_config.json and adapter_model.safetensors (the prefix), and the prefix MLP for resume."""
    from safetensors.torch import save_file

    model.save_pretrained(str(folder), safe_serialization=True)
    if model.peft_config["default"].prefix_projection:
        encoder = model.prompt_encoder["default"].state_dict()
        (Path(folder) / ENCODER_STATE).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in encoder.items()}, str(Path(folder) / ENCODER_STATE))


def restore(model: PeftModel, folder: str | Path) -> None:
    """Put the trained prefix (with prefix_projection, its MLP) back into `model` in place, for resume."""
    from safetensors.torch import load_file

    if not model.peft_config["default"].prefix_projection:
        restore_peft(model, Path(folder))
        return
    path = Path(folder) / ENCODER_STATE
    if not path.is_file():
        raise ConfigError(
            f"no {ENCODER_STATE} to resume the prefix MLP from",
            file=str(folder),
            hint="this checkpoint was saved without prefix_projection; set method.prefix_projection=false",
        )
    try:
        result = model.prompt_encoder["default"].load_state_dict(load_file(str(path)), strict=False)
    except RuntimeError as error:
        raise ConfigError(
            f"the prefix does not fit: {str(error).splitlines()[-1].strip()}",
            file=str(path),
            hint="resume with the pre_seq_len and prefix_hidden_size the run started with",
        ) from None
    check_fits(list(result.unexpected_keys), Path(folder))


def load(base_model: nn.Module, folder: str | Path, *, trainable: bool = False) -> PeftModel:
    from peft import PeftModel

    with quiet_peft():
        model = PeftModel.from_pretrained(base_model, str(folder))
    if trainable:  # peft refuses is_trainable for prompt learning; the prefix encoder is all there is to train
        for name, param in model.named_parameters():
            param.requires_grad = "prompt_encoder" in name
    return model


def merge(model: nn.Module) -> nn.Module:
    raise ConfigError(
        "a P-Tuning v2 prefix cannot be merged into the weights",
        field="method.name",
        hint="use the checkpoint as it is: tunellm chat/eval/predict --adapter CHECKPOINT",
    )


def contract_variants() -> dict[str, Variant]:
    def prefix(name: str) -> bool:
        return "prompt_encoder" in name

    return {
        "ptuning_v2": Variant(PTuningV2Method(pre_seq_len=4, prefix_projection=True, prefix_hidden_size=16), prefix),
        "ptuning_v2_plain": Variant(PTuningV2Method(pre_seq_len=4), prefix),
    }


Config = PTuningV2Method
supports_merge = False
weight_files = ("adapter_model.safetensors",)
METHODS.register("ptuning_v2")(sys.modules[__name__])
