"""ChatGLM-6B (the first version: 2D positions) as tunellm's native `tunellm_chatglm6b` (tunellm.models.chatglm6b).

The native model keeps the original weight names, so the conversion rewrites config.json and drops the rotary
frequency buffers, which the model computes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tunellm.models.convert.chatglm2 import needs_own_code

ORIGIN = "chatglm6b"
KEPT = (
    "vocab_size", "hidden_size", "num_layers", "num_attention_heads", "layernorm_epsilon", "inner_hidden_size",
    "max_sequence_length", "bos_token_id", "eos_token_id", "mask_token_id", "gmask_token_id", "pad_token_id",
)  # fmt: skip


def accepts(raw: dict[str, Any]) -> bool:
    return raw.get("model_type") == "chatglm" and bool(raw.get("position_encoding_2d", False))


def convert_config(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    for field, what in (("pre_seq_len", "a P-Tuning v2 prefix encoder"), ("quantization_bit", "quantized weights")):
        if raw.get(field):
            raise needs_own_code(raw, folder, field, f"this ChatGLM-6B checkpoint holds {what}")
    fields = {key: raw[key] for key in KEPT if key in raw}
    fields.update(model_type="tunellm_chatglm6b", architectures=["ChatGLM6BForCausalLM"], tunellm_origin=ORIGIN)
    fields["dtype"] = raw.get("torch_dtype", raw.get("dtype", "float32"))
    return fields


def convert_weights(state: dict[str, torch.Tensor], config: dict[str, Any], folder: Path) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in state.items() if not name.endswith("rotary_emb.inv_freq")}


def original_weights(native: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    state = dict(native)
    rotary = config["hidden_size"] // config["num_attention_heads"] // 2
    inv_freq = (1.0 / 10000 ** (torch.arange(0, rotary, 2).float() / rotary)).half()
    for layer in range(config["num_layers"]):
        state[f"transformer.layers.{layer}.attention.rotary_emb.inv_freq"] = inv_freq.clone()
    return state
