"""Baichuan-7B and Baichuan2-7B as transformers' `llama`.

Both are LLaMA with the query, key and value projections fused into one `W_pack` (rows: all of q, then k,
then v) and LLaMA's rotary layout. Baichuan2's `NormHead` normalises each output row to unit length before
the product (at every training step, once at inference); the conversion stores the normalised rows, which is
what the published model computes at inference. (Training the head afterwards would not renormalise it; the
default LoRA targets leave the head alone.) The 13B models use ALiBi instead of rotary positions, which
`llama` cannot express: they are refused unless the user trusts the checkpoint's own code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tunellm.errors import ModelError
from tunellm.models.convert.weights import take

ORIGIN = "baichuan"
BAICHUAN2_VOCAB = 125696


def shipped_code(folder: Path) -> str:
    return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in folder.glob("*.py"))


def accepts(raw: dict[str, Any]) -> bool:
    return raw.get("model_type") == "baichuan"


def uses_alibi(raw: dict[str, Any], folder: Path) -> bool:
    code = shipped_code(folder).lower()
    if code:  # the 13B files build ALiBi masks and no rotary embedding; the 7B files the reverse
        return "alibi" in code and "rotary" not in code
    return "max_position_embeddings" not in raw  # the 13B configs have only model_max_length


def has_norm_head(raw: dict[str, Any], folder: Path) -> bool:
    code = shipped_code(folder)
    if code:
        return "class NormHead" in code
    return raw.get("vocab_size") == BAICHUAN2_VOCAB


def convert_config(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    if uses_alibi(raw, folder):
        raise ModelError(
            "Baichuan 13B models use ALiBi positions, which no native transformers architecture computes",
            file=str(folder / "config.json"),
            field="model.trust_remote_code",
            expected="true, to run the checkpoint's own code",
            hint="read the checkpoint's .py files, then set model.trust_remote_code=true "
            "(Baichuan-7B and Baichuan2-7B load natively)",
        )
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": raw["vocab_size"],
        "hidden_size": raw["hidden_size"],
        "intermediate_size": raw["intermediate_size"],
        "num_hidden_layers": raw["num_hidden_layers"],
        "num_attention_heads": raw["num_attention_heads"],
        "num_key_value_heads": raw["num_attention_heads"],
        "hidden_act": raw.get("hidden_act", "silu"),
        "max_position_embeddings": raw.get("max_position_embeddings", raw.get("model_max_length", 4096)),
        "rms_norm_eps": raw.get("rms_norm_eps", 1e-6),
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": raw.get("bos_token_id", 1),
        "eos_token_id": raw.get("eos_token_id", 2),
        "pad_token_id": raw.get("pad_token_id", 0),
        "dtype": raw.get("torch_dtype", raw.get("dtype", "float32")),
        "tunellm_origin": ORIGIN,
        "tunellm_norm_head": has_norm_head(raw, folder),
    }


def convert_weights(state: dict[str, torch.Tensor], config: dict[str, Any], folder: Path) -> dict[str, torch.Tensor]:
    state = dict(state)
    native: dict[str, torch.Tensor] = {}
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}.self_attn."
        fused = take(state, prefix + "W_pack.weight", folder)
        for name, part in zip(("q_proj", "k_proj", "v_proj"), fused.chunk(3, dim=0), strict=True):
            native[f"{prefix}{name}.weight"] = part.clone()
    for name in [n for n in state if n.endswith("rotary_emb.inv_freq")]:
        state.pop(name)
    head = take(state, "lm_head.weight", folder)
    if config["tunellm_norm_head"]:
        head = torch.nn.functional.normalize(head.float(), dim=-1).to(head.dtype)
    native["lm_head.weight"] = head
    native.update(state)  # every other name is already LLaMA's
    return native


def original_weights(native: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The inverse: q/k/v back into W_pack, and the rotary buffers the released files hold (a normalised head
    stays normalised under NormHead)."""
    state = dict(native)
    dim = config["hidden_size"] // config["num_attention_heads"]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}.self_attn."
        parts = [state.pop(f"{prefix}{name}.weight") for name in ("q_proj", "k_proj", "v_proj")]
        state[prefix + "W_pack.weight"] = torch.cat(parts, dim=0)
        state[prefix + "rotary_emb.inv_freq"] = inv_freq.clone()
    return state
