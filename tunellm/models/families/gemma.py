"""Gemma (first generation); its instruct checkpoints ship a chat template."""

from tunellm.models.families.base import FAMILIES, Family, llama_style_tiny

FAMILY = FAMILIES.register("gemma")(
    Family(
        name="gemma",
        model_types=("gemma",),
        packs=True,
        lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        tiny_config=lambda: llama_style_tiny("gemma", head_dim=16, tie_word_embeddings=True),
        checkpoints=("google/gemma-2b-it", "google/gemma-7b"),
    )
)
