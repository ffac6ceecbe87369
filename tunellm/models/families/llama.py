"""LLaMA and its many fine-tunes: Chinese-LLaMA-Alpaca, Open-LLaMA, BELLE-LLaMA, TigerBot-llama, SmolLM2; and
Baichuan-7B / Baichuan2-7B converted to `llama` at load (tunellm.models.convert.baichuan), which keep the
baichuan template."""

from typing import Any

from tunellm.models.families.base import FAMILIES, Family, auto_template, converted_from, llama_style_tiny

FALLBACK = "alpaca"  # the base checkpoints and most Chinese fine-tunes carry no chat template


def choose_template(tokenizer: Any, config: Any) -> str:
    if converted_from(config) == "baichuan":
        return "baichuan"
    return auto_template(tokenizer, FALLBACK)


FAMILY = FAMILIES.register("llama")(
    Family(
        name="llama",
        model_types=("llama",),
        packs=True,
        lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        template=choose_template,
        fallback_template=FALLBACK,
        tiny_config=lambda: llama_style_tiny("llama"),
        checkpoints=(
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "meta-llama/Llama-2-7b-chat-hf",
            "hfl/chinese-alpaca-2-7b",
            "openlm-research/open_llama_7b_v2",
            "BelleGroup/BELLE-LLaMA-EXT-13B",
            "TigerResearch/tigerbot-7b-sft",
            "baichuan-inc/Baichuan-7B",
            "baichuan-inc/Baichuan2-7B-Chat",
        ),
    )
)
