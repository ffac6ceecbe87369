"""LLaMA and its many fine-tunes: Chinese-LLaMA-Alpaca, Open-LLaMA, BELLE-LLaMA, TigerBot-llama, SmolLM2."""

from tunellm.models.families.base import FAMILIES, Family, llama_style_tiny

FAMILY = FAMILIES.register("llama")(
    Family(
        name="llama",
        model_types=("llama",),
        packs=True,
        lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        fallback_template="alpaca",  # the base checkpoints and most Chinese fine-tunes carry no chat template
        tiny_config=lambda: llama_style_tiny("llama"),
        checkpoints=(
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "meta-llama/Llama-2-7b-chat-hf",
            "hfl/chinese-alpaca-2-7b",
            "openlm-research/open_llama_7b_v2",
            "BelleGroup/BELLE-LLaMA-EXT-13B",
            "TigerResearch/tigerbot-7b-sft",
        ),
    )
)
