"""BLOOM and its Chinese fine-tunes: BELLE-7B, TigerBot-bloom. None ship a chat template."""

from tunellm.models.families.base import FAMILIES, TINY_VOCAB, Family

FAMILY = FAMILIES.register("bloom")(
    Family(
        name="bloom",
        model_types=("bloom",),
        lora_targets=("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
        fallback_template="alpaca",
        tiny_config=lambda: {
            "model_type": "bloom",
            "vocab_size": TINY_VOCAB,
            "hidden_size": 64,
            "n_layer": 2,
            "n_head": 4,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": None,
        },
        checkpoints=("BelleGroup/BELLE-7B-2M", "TigerResearch/tigerbot-7b-sft-v1", "bigscience/bloomz-560m"),
    )
)
