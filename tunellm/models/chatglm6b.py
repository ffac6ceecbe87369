"""ChatGLM-6B (the first version) as a native transformers model, registered with the Auto classes as
`tunellm_chatglm6b`, so that its checkpoints run without their remote code.

The architecture (checked against modelscope's implementation in tests/unit/test_chatglm6b.py):
- fused QKV laid out per head ([q k v] for each head), biases on every linear layer, LayerNorm;
- 2D rotary positions: the first half of each head rotates by the token's position, the second half by its
  block position (rotate-half layout, frequencies rounded to fp16 as the release computes them); inside the
  prompt (up to the `<sop>` token) positions count up and block positions are 0; from `<sop>` on, positions
  stay at the `[gMASK]` position and block positions count 1, 2, ...;
- a prefix-LM mask: every token sees the whole prompt up to `<sop>`, and the tokens before it causally after;
- residuals from the normalised input scaled by alpha = sqrt(2 * 28): x = LN(x) * alpha + f(LN(x)) (28 for
  any depth: the released code leaves GLMBlock's num_layers at its default);
- a GeLU (tanh) MLP, a final LayerNorm and an untied output layer.
Weight names are the original checkpoint's, so a conversion only rewrites config.json. Left padding (a 2D
attention mask) shifts each row's positions to start at its first real token, as the released tokenizer pads.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

MODEL_TYPE = "tunellm_chatglm6b"
RELEASED_LAYERS = 28


class ChatGLM6BConfig(PretrainedConfig):
    model_type = MODEL_TYPE
    attribute_map = {"num_hidden_layers": "num_layers", "intermediate_size": "inner_hidden_size"}

    def __init__(
        self,
        vocab_size: int = 130528,
        hidden_size: int = 4096,
        num_layers: int = 28,
        num_attention_heads: int = 32,
        layernorm_epsilon: float = 1e-5,
        inner_hidden_size: int = 16384,
        max_sequence_length: int = 2048,
        bos_token_id: int = 130004,
        eos_token_id: int = 130005,
        mask_token_id: int = 130000,
        gmask_token_id: int = 130001,
        pad_token_id: int = 3,
        use_cache: bool = True,
        **kwargs: Any,
    ) -> None:
        self.vocab_size, self.hidden_size, self.num_layers = vocab_size, hidden_size, num_layers
        self.num_attention_heads, self.layernorm_epsilon = num_attention_heads, layernorm_epsilon
        self.inner_hidden_size, self.max_sequence_length = inner_hidden_size, max_sequence_length
        self.mask_token_id, self.gmask_token_id, self.use_cache = mask_token_id, gmask_token_id, use_cache
        self.position_encoding_2d = True
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class Attention(nn.Module):
    def __init__(self, config: ChatGLM6BConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx, self.heads = layer_idx, config.num_attention_heads
        self.head_dim = config.hidden_size // self.heads
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: (batch, length, heads, head_dim/2); positions: (batch, length). Computed here rather than kept in a
        buffer, which from_pretrained would leave uninitialised."""
        rotary = self.head_dim // 2
        steps = torch.arange(0, rotary, 2, device=x.device).float() / rotary
        inv_freq = (1.0 / 10000**steps).half().float()  # the release's frequencies are fp16
        freqs = positions[..., None].float() * inv_freq
        angles = torch.cat([freqs, freqs], dim=-1)[:, :, None, :]
        return x * angles.cos().to(x.dtype) + rotate_half(x) * angles.sin().to(x.dtype)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor, cache: Any) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.query_key_value(x).view(batch, length, self.heads, 3 * self.head_dim).chunk(3, dim=-1)
        parts = []
        for t in (q, k):
            first, second = t.chunk(2, dim=-1)
            parts.append(torch.cat([self.rotate(first, positions[:, 0]), self.rotate(second, positions[:, 1])], -1))
        q, k, v = (t.transpose(1, 2) for t in (parts[0], parts[1], v))
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=1 / math.sqrt(self.head_dim))
        return self.dense(out.transpose(1, 2).reshape(batch, length, width))


class MLP(nn.Module):
    def __init__(self, config: ChatGLM6BConfig) -> None:
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.inner_hidden_size)
        self.dense_4h_to_h = nn.Linear(config.inner_hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x), approximate="tanh"))


class Block(GradientCheckpointingLayer):
    def __init__(self, config: ChatGLM6BConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.attention = Attention(config, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.mlp = MLP(config)
        self.alpha = (2 * RELEASED_LAYERS) ** 0.5  # the released code never passes its layer count: always 28

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor, past_key_values: Any = None
    ) -> torch.Tensor:
        attention_input = self.input_layernorm(x)
        x = attention_input * self.alpha + self.attention(attention_input, positions, allowed, past_key_values)
        mlp_input = self.post_attention_layernorm(x)
        return mlp_input * self.alpha + self.mlp(mlp_input)


class Transformer(nn.Module):
    def __init__(self, config: ChatGLM6BConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_layers))
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)


def row_layout(ids: list[int], config: ChatGLM6BConfig) -> tuple[int, int]:
    """(context length, mask position) of one unpadded row: the prompt runs up to `<sop>`; no `<sop>` means
    a plain causal row; the mask position is `[gMASK]`'s (else `[MASK]`'s, else the prompt's last token)."""
    context = ids.index(config.bos_token_id) if config.bos_token_id in ids else len(ids)
    for token in (config.gmask_token_id, config.mask_token_id):
        if token in ids:
            return context, ids.index(token)
    return context, max(context - 1, 0)


def positions_and_mask(input_ids: torch.Tensor, padding: torch.Tensor | None, config: ChatGLM6BConfig):
    """(position ids (batch, 2, length), allowed (batch, 1, length, length) bool) for whole sequences."""
    batch, length = input_ids.shape
    device = input_ids.device
    real = torch.ones_like(input_ids, dtype=torch.bool) if padding is None else padding.bool()
    positions = torch.zeros(batch, 2, length, dtype=torch.long, device=device)
    allowed = torch.ones(length, length, dtype=torch.bool, device=device).tril().repeat(batch, 1, 1)
    for row in range(batch):
        start = int((~real[row]).cumprod(0).sum())  # left padding
        ids = input_ids[row, start:].tolist()
        context, mask_position = row_layout(ids, config)
        span = torch.arange(len(ids), device=device)
        positions[row, 0, start:] = torch.where(span < context, span, mask_position)
        positions[row, 1, start:] = (span - context + 1).clamp(min=0)
        if context < len(ids):  # a prefix-LM row: the prompt is seen whole
            allowed[row, :, start : start + context] = True
    allowed &= real[:, None, :]
    allowed |= torch.eye(length, dtype=torch.bool, device=device)  # padding rows see themselves, not nothing
    return positions, allowed[:, None]


class ChatGLM6BForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = ChatGLM6BConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["Block"]

    def __init__(self, config: ChatGLM6BConfig) -> None:
        super().__init__(config)
        self.transformer = Transformer(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def get_input_embeddings(self) -> nn.Module:
        return self.transformer.word_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.transformer.word_embeddings = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, **kwargs):
        """Prefill runs the whole prompt (positions and prefix-LM mask built in forward); later steps run the new
        tokens with positions taken from the whole sequence. The 2D mask stays 2D (peft prepends its prefix)."""
        prefill = past_key_values is None or past_key_values.get_seq_length() == 0
        new = input_ids.shape[1] if prefill else kwargs.get("next_sequence_length") or 1
        positions = None if prefill else positions_and_mask(input_ids, attention_mask, self.config)[0][..., -new:]
        return {
            "input_ids": input_ids[:, -new:],
            "positions_2d": positions,  # not position_ids: peft shifts those past its prefix, which GLM does not
            "attention_mask": attention_mask,
            "past_key_values": past_key_values,
            "use_cache": kwargs.get("use_cache", self.config.use_cache),
        }

    def attention_for(self, input_ids, attention_mask, position_ids, past: int):
        """(positions, allowed (batch, 1, new, past + new)). Without position_ids the inputs are whole sequences
        and anything already cached is a trained prefix (P-Tuning v2) that every token sees; with them, the
        inputs continue the cached sequence and see it causally."""
        batch, new = input_ids.shape
        padding = attention_mask if attention_mask is not None else input_ids.new_ones(batch, past + new)
        if padding.shape[-1] != past + new:
            raise ValueError(f"attention_mask covers {padding.shape[-1]} positions, expected {past + new}")
        if position_ids is None:
            positions, allowed = positions_and_mask(input_ids, padding[:, past:], self.config)
            seen = padding[:, None, None, :past].bool().expand(batch, 1, new, past)
            return positions, torch.cat([seen, allowed], dim=-1)
        keys = torch.arange(past + new, device=input_ids.device)
        causal = keys[None, :] <= past + torch.arange(new, device=input_ids.device)[:, None]
        return position_ids, (causal[None, None] & padding[:, None, None, :].bool())

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        positions_2d: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        position_ids = positions_2d if positions_2d is not None else position_ids
        if input_ids is None:
            raise ValueError("ChatGLM-6B needs input_ids (its positions depend on [gMASK] and <sop>)")
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        positions, allowed = self.attention_for(input_ids, attention_mask, position_ids, past)
        hidden = self.transformer.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        for layer in self.transformer.layers:
            hidden = layer(hidden, positions, allowed, past_key_values=past_key_values)
        logits = self.lm_head(self.transformer.final_layernorm(hidden))
        loss = None
        if labels is not None:
            shifted = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
            loss = F.cross_entropy(shifted, labels[:, 1:].reshape(-1).to(logits.device), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=past_key_values if use_cache else None)


def register() -> None:
    """Make `tunellm_chatglm6b` folders loadable through AutoConfig and AutoModelForCausalLM (idempotent)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if MODEL_TYPE not in CONFIG_MAPPING:
        AutoConfig.register(MODEL_TYPE, ChatGLM6BConfig)
        AutoModelForCausalLM.register(ChatGLM6BConfig, ChatGLM6BForCausalLM)


register()
