"""Mistral: its instruct checkpoints ship a chat template; the [INST] format is llama2's without a system turn."""

from tunellm.models.families.base import FAMILIES, Family, llama_style_tiny

FAMILY = FAMILIES.register("mistral")(
    Family(
        name="mistral",
        model_types=("mistral",),
        packs=True,
        lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        fallback_template="llama2",
        tiny_config=lambda: llama_style_tiny("mistral", sliding_window=None),
        checkpoints=("mistralai/Mistral-7B-Instruct-v0.3", "mistralai/Mistral-7B-v0.1"),
    )
)
