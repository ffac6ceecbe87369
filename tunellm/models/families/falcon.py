"""Falcon (7B/40B and the instruct fine-tunes), native in transformers."""

from tunellm.models.families.base import FAMILIES, TINY_VOCAB, Family

FAMILY = FAMILIES.register("falcon")(
    Family(
        name="falcon",
        model_types=("falcon",),
        lora_targets=("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
        fallback_template="alpaca",
        tiny_config=lambda: {
            "model_type": "falcon",
            "vocab_size": TINY_VOCAB,
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        checkpoints=("tiiuae/falcon-7b-instruct", "tiiuae/falcon-7b"),
    )
)
