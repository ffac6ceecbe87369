"""ChatGLM2-6B, ChatGLM3-6B (their 32k/128k variants) and the remote-code GLM-4 release as transformers' `glm`.

The computation is the same (checked against modelscope's ChatGLM2 implementation in
tests/unit/test_convert_chatglm2.py): RMSNorm before attention and MLP, fused QKV with bias and multi-query
groups, rotary embeddings on the first half of each head with interleaved pairs, SwiGLU with the gate first,
a final RMSNorm and an untied output layer. `rope_ratio` means two things in the released code: ChatGLM2-6B-32k
divides the positions by it (linear interpolation), ChatGLM3 and GLM-4 multiply the rotary base by it; the
checkpoint's modeling file is read as text (never run) to tell which.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tunellm.errors import ModelError
from tunellm.models.convert.weights import take

ORIGIN = "chatglm"
BASE = 10000.0
UNSUPPORTED = {  # config field -> the value every released ChatGLM2/3/GLM-4 checkpoint has
    "rmsnorm": True,
    "apply_residual_connection_post_layernorm": False,
    "post_layer_norm": True,
    "add_bias_linear": False,
}


def accepts(raw: dict[str, Any]) -> bool:
    """ChatGLM2/3 and GLM-4 (model_type chatglm without ChatGLM-6B's 2D positions)."""
    return raw.get("model_type") == "chatglm" and not raw.get("position_encoding_2d", False)


def rope_parameters(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    ratio = float(raw.get("rope_ratio", 1.0) or 1.0)
    base = {"rope_theta": BASE, "partial_rotary_factor": 0.5}
    if ratio == 1.0:
        return {"rope_type": "default", **base}
    code = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in folder.glob("*.py"))
    if "base * self.rope_ratio" in code:
        return {"rope_type": "default", **base, "rope_theta": BASE * ratio}
    if "/ self.rope_ratio" in code:
        return {"rope_type": "linear", **base, "factor": ratio}
    raise ModelError(
        f"cannot tell how this checkpoint applies rope_ratio={ratio}",
        file=str(folder / "config.json"),
        field="rope_ratio",
        expected="the checkpoint's modeling_chatglm.py beside config.json",
        hint="ChatGLM2-32k divides positions by it, ChatGLM3/GLM-4 multiply the rotary base; copy the .py files in",
    )


def needs_own_code(raw: dict[str, Any], folder: Path, field: str, what: str) -> ModelError:
    """The error for a checkpoint variant with no native form: only its own code runs it."""
    return ModelError(
        f"{what} ({field}={raw[field]}) has no native form",
        file=str(folder / "config.json"),
        field="model.trust_remote_code",
        expected="true, to run the checkpoint's own code",
        hint="read the checkpoint's .py files, then set model.trust_remote_code=true",
    )


def convert_config(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    for field, value in UNSUPPORTED.items():
        if raw.get(field, value) != value:
            raise needs_own_code(raw, folder, field, "this ChatGLM variant")
    for field, what in (("pre_seq_len", "a P-Tuning v2 prefix encoder"), ("quantization_bit", "quantized weights")):
        if raw.get(field):
            raise needs_own_code(raw, folder, field, f"this checkpoint holds {what}")
    heads = raw["num_attention_heads"]
    groups = raw.get("multi_query_group_num", 1) if raw.get("multi_query_attention") else heads
    eos = raw.get("eos_token_id", 2)
    return {
        "model_type": "glm",
        "architectures": ["GlmForCausalLM"],
        "vocab_size": raw.get("padded_vocab_size", raw.get("vocab_size")),
        "hidden_size": raw["hidden_size"],
        "intermediate_size": raw["ffn_hidden_size"],
        "num_hidden_layers": raw["num_layers"],
        "num_attention_heads": heads,
        "num_key_value_heads": groups,
        "head_dim": raw.get("kv_channels") or raw["hidden_size"] // heads,
        "hidden_act": "silu",
        "attention_bias": bool(raw.get("add_qkv_bias", False)),
        "attention_dropout": raw.get("attention_dropout", 0.0),
        "max_position_embeddings": raw.get("seq_length", 2048),
        "rms_norm_eps": raw.get("layernorm_epsilon", 1e-5),
        "rope_parameters": rope_parameters(raw, folder),
        "tie_word_embeddings": False,
        "pad_token_id": raw.get("pad_token_id", 0),
        "eos_token_id": eos,
        "bos_token_id": raw.get("bos_token_id"),
        "dtype": raw.get("torch_dtype", raw.get("dtype", "float32")),
        "tunellm_origin": ORIGIN,
    }


def split_qkv(fused: torch.Tensor, config: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """Fused rows are [all query heads | key groups | value groups] with multi-query attention, else
    [q, k, v] per head; the result is (q, k, v) for separate projections."""
    heads, groups, dim = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    if groups != heads:
        return tuple(fused.split([heads * dim, groups * dim, groups * dim], dim=0))
    per_head = fused.reshape(heads, 3, dim, *fused.shape[1:])
    return tuple(per_head[:, i].reshape(heads * dim, *fused.shape[1:]) for i in range(3))


def join_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: dict[str, Any]) -> torch.Tensor:
    heads, groups, dim = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    if groups != heads:
        return torch.cat([q, k, v], dim=0)
    parts = [t.reshape(heads, 1, dim, *t.shape[1:]) for t in (q, k, v)]
    return torch.cat(parts, dim=1).reshape(3 * heads * dim, *q.shape[1:])


LAYER_NAMES = {  # original name inside a layer -> native name inside a layer
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
}
TOP_NAMES = {
    "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "transformer.encoder.final_layernorm.weight": "model.norm.weight",
    "transformer.output_layer.weight": "lm_head.weight",
}


def convert_weights(state: dict[str, torch.Tensor], config: dict[str, Any], folder: Path) -> dict[str, torch.Tensor]:
    state = dict(state)
    state.pop("transformer.rotary_pos_emb.inv_freq", None)
    native = {new: take(state, old, folder) for old, new in TOP_NAMES.items()}
    for layer in range(config["num_hidden_layers"]):
        old, new = f"transformer.encoder.layers.{layer}.", f"model.layers.{layer}."
        for old_name, new_name in LAYER_NAMES.items():
            native[new + new_name] = take(state, old + old_name, folder)
        kinds = ("weight", "bias") if config["attention_bias"] else ("weight",)
        for kind in kinds:
            fused = take(state, f"{old}self_attention.query_key_value.{kind}", folder)
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), split_qkv(fused, config), strict=True):
                native[f"{new}self_attn.{proj}.{kind}"] = part.clone()
    if state:
        raise ModelError(
            "the checkpoint holds weights the native ChatGLM form has no place for",
            file=str(folder),
            hint="unexpected: " + ", ".join(sorted(state)[:5]),
        )
    return native


def original_weights(native: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The inverse of convert_weights: native `glm` names back to the original checkpoint's names."""
    state = {old: native[new] for old, new in TOP_NAMES.items()}
    rotary = config["head_dim"] // 2  # the released code keeps base 10000 in this buffer and scales elsewhere
    state["transformer.rotary_pos_emb.inv_freq"] = 1.0 / (BASE ** (torch.arange(0, rotary, 2).float() / rotary))
    for layer in range(config["num_hidden_layers"]):
        old, new = f"transformer.encoder.layers.{layer}.", f"model.layers.{layer}."
        for old_name, new_name in LAYER_NAMES.items():
            state[old + old_name] = native[new + new_name]
        kinds = ("weight", "bias") if config["attention_bias"] else ("weight",)
        for kind in kinds:
            parts = [native[f"{new}self_attn.{p}.{kind}"] for p in ("q_proj", "k_proj", "v_proj")]
            state[f"{old}self_attention.query_key_value.{kind}"] = join_qkv(*parts, config)
    return state
