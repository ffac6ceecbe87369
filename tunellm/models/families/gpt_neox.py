"""GPT-NeoX architecture: Pythia and its fine-tunes."""

from tunellm.models.families.base import FAMILIES, TINY_VOCAB, Family

FAMILY = FAMILIES.register("gpt_neox")(
    Family(
        name="gpt_neox",
        model_types=("gpt_neox",),
        packs=True,
        lora_targets=("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
        fallback_template="alpaca",
        tiny_config=lambda: {
            "model_type": "gpt_neox",
            "vocab_size": TINY_VOCAB,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 256,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        checkpoints=("EleutherAI/pythia-410m", "EleutherAI/pythia-1.4b-deduped"),
    )
)
