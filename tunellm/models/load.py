"""Load a causal LM with its tokenizer and family: hub name, local folder, GGUF file or the embedded default.

`dtype: auto` is bf16 on a CUDA device that supports it and fp32 otherwise; fp16 is used only when asked
for, since training fp16 weights needs a loss scaler. `attn_implementation: auto` is flash-attention 2
when `flash_attn` is installed and the model runs on CUDA in half precision, else SDPA where the model
supports it, else eager. Checkpoints that ship their own model code are refused, before any weights load,
unless `trust_remote_code` is set. `rope_scaling` is set on the config before the weights load (see rope.py).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from tunellm.config.schema import ModelConfig
from tunellm.errors import ModelError
from tunellm.models.families import Family, family_for
from tunellm.models.rope import apply_rope_scaling, check_context_length
from tunellm.models.tokenizer import (  # noqa: F401 - load_tokenizer_and_template: callers import it from here too
    check_remote_code,
    load_tokenizer,
    load_tokenizer_and_template,
    model_location,
    read_config_dict,
)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(choice: str, device: torch.device) -> torch.dtype:
    if choice != "auto":
        return DTYPES[choice]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def native_class(config: Any) -> type | None:
    """The transformers causal-LM class for this config, or None for remote code."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    if not type(config).__module__.startswith("transformers."):  # remote code registers itself in the mapping
        return None
    try:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        return None


def resolve_attention(choice: str, config: Any, device: torch.device, dtype: torch.dtype) -> str | None:
    """The attention kernel to ask for; None leaves remote-code models to their own choice."""
    if choice != "auto":
        return choice
    cls = native_class(config)
    if cls is None:
        return None
    half = dtype in (torch.bfloat16, torch.float16)
    flash_installed = importlib.util.find_spec("flash_attn") is not None
    if device.type == "cuda" and half and flash_installed and getattr(cls, "_supports_flash_attn", False):
        return "flash_attention_2"
    return "sdpa" if getattr(cls, "_supports_sdpa", False) else "eager"


def load_model(
    model_config: ModelConfig,
    *,
    device: str | torch.device | None = None,
    load_options: dict[str, Any] | None = None,
    tokenizer: Any = None,
) -> tuple[Any, Any, Family]:
    """(model, tokenizer, family), the model on `device` (default: CUDA when available) in eval mode.

    `load_options` go to `from_pretrained` as well (a tuning method's quantization_config and compute dtype).
    `tokenizer`, when given (a checkpoint's own), is used instead of loading the base model's.
    """
    from transformers import AutoConfig

    location, gguf_file = model_location(model_config)
    if gguf_file is None:
        check_remote_code(read_config_dict(location), model_config, location)
    target = resolve_device(device)
    dtype = resolve_dtype(model_config.dtype, target)
    options: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    if model_config.trust_remote_code:
        options["trust_remote_code"] = True
    config = AutoConfig.from_pretrained(location, **options)
    family = family_for(config.model_type)
    if model_config.rope_scaling is not None:
        apply_rope_scaling(config, model_config.rope_scaling, family.name)
    if tokenizer is None:
        tokenizer = load_tokenizer(model_config)
    attention = resolve_attention(model_config.attn_implementation, config, target, dtype)
    if attention is not None:
        options["attn_implementation"] = attention
    if target.type != "cpu":
        options["device_map"] = {"": target}
    extra = dict(load_options or {})
    model = load_weights(location, config, extra.pop("dtype", dtype), {**options, **extra})
    if gguf_file and getattr(model, "hf_quantizer", None) is not None:
        # the weights are already dequantized; the marker would block save_pretrained (merge)
        model.hf_quantizer.remove_quantization_config(model)
    family.fix_tokens(tokenizer, model)
    return model, tokenizer, family


def load_weights(location: str, config: Any, dtype: torch.dtype, options: dict[str, Any]) -> Any:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(location, config=config, dtype=dtype, **options)
    except ImportError as error:
        raise ModelError(
            f"cannot load the model: {error}",
            file=location,
            field="model.attn_implementation",
            hint="install the missing package, or set model.attn_implementation=sdpa",
        ) from None
    except (OSError, ValueError) as error:
        field = "model.attn_implementation" if "attn_implementation" in str(error) else "model.name_or_path"
        raise ModelError(f"cannot load the model: {error}", file=location, field=field) from None


def check_context(model_config: ModelConfig, cutoff_len: int) -> None:
    """Before the data is read: `model.rope_scaling` fits the model (ModelError if not), and a warning when
    `cutoff_len` passes the positions the model will take. Reads only the model's config."""
    from transformers import AutoConfig

    location, gguf_file = model_location(model_config)
    options: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    if gguf_file is None and check_remote_code(read_config_dict(location), model_config, location):
        options["trust_remote_code"] = True
    config = AutoConfig.from_pretrained(location, **options)
    family = family_for(config.model_type)
    check_context_length(config, model_config.rope_scaling, family.name, cutoff_len)
