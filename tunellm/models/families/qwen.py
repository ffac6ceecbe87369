"""Qwen2, Qwen2.5 and Qwen3 (native in transformers); their chat format is ChatML."""

from tunellm.models.families.base import FAMILIES, Family, llama_style_tiny

FAMILY = FAMILIES.register("qwen")(
    Family(
        name="qwen",
        model_types=("qwen2", "qwen3"),
        packs=True,
        lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        fallback_template="chatml",
        tiny_config=lambda: llama_style_tiny("qwen2"),
        checkpoints=("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2-7B-Instruct", "Qwen/Qwen3-0.6B"),
    )
)
