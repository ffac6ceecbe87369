"""What tunellm knows about one model family: model types, template, LoRA targets, token fixes, a tiny config.

A family is matched by `config.model_type`. Types no family claims get `GENERIC`: LoRA on every linear
layer except the output head, the tokenizer's own chat template (alpaca without one), pad = EOS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunellm.registry import Registry

TINY_VOCAB = 1024


def pad_from_eos(tokenizer: Any, model: Any) -> None:
    """Most base checkpoints ship without a pad token; padding is masked out, so EOS can stand in."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
    if model is None or tokenizer.pad_token_id is None:
        return
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    generation = getattr(model, "generation_config", None)
    if generation is not None and generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id


def add_stop_tokens(tokenizer: Any, model: Any, tokens: tuple[str, ...]) -> None:
    """Make `generate` also stop on these tokens, where the tokenizer has them as single tokens."""
    generation = getattr(model, "generation_config", None)
    if generation is None:
        return
    eos = generation.eos_token_id
    ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    for token in tokens:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            continue
        if tokenizer.convert_ids_to_tokens(token_id) == token and token_id not in ids:
            ids.append(token_id)
    if ids:
        generation.eos_token_id = ids if len(ids) > 1 else ids[0]


def llama_style_tiny(model_type: str, **overrides: Any) -> dict[str, Any]:
    """Tiny config for the many families that reuse LLaMA's config field names."""
    config = {
        "model_type": model_type,
        "vocab_size": TINY_VOCAB,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": None,
        "tie_word_embeddings": False,
    }
    config.update(overrides)
    return config


TemplateChooser = Callable[[Any, Any], str]


def converted_from(config: Any) -> str | None:
    """The remote-code family a native checkpoint was converted from (tunellm.models.convert), if any."""
    return getattr(config, "tunellm_origin", None)


@dataclass(frozen=True)
class Family:
    """`template` is a template name, "auto" (the tokenizer's own chat template, else `fallback_template`),
    or a function (tokenizer, model config) -> name for families whose versions differ."""

    name: str
    model_types: tuple[str, ...]
    lora_targets: tuple[str, ...] | str
    template: str | TemplateChooser = "auto"
    fallback_template: str = "alpaca"
    needs_remote_code: bool = False
    packs: bool = False  # its transformers attention derives a block-diagonal mask from packed position ids
    fix_tokens: Callable[[Any, Any], None] = pad_from_eos
    tiny_config: Callable[[], dict[str, Any]] | None = None
    checkpoints: tuple[str, ...] = ()

    def template_for(self, tokenizer: Any, config: Any = None) -> str:
        if callable(self.template):
            return self.template(tokenizer, config)
        if self.template != "auto":
            return self.template
        return auto_template(tokenizer, self.fallback_template)


def auto_template(tokenizer: Any, fallback: str) -> str:
    """The tokenizer's own chat template where it has one, else `fallback`."""
    return "hf_chat" if getattr(tokenizer, "chat_template", None) else fallback


FAMILIES: Registry[Family] = Registry("model family")

GENERIC = Family(name="generic", model_types=(), lora_targets="all-linear")


def family_for(model_type: str | None) -> Family:
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    return GENERIC
