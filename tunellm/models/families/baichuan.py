"""Baichuan-7B/13B and Baichuan2 (remote code, model_type `baichuan`); attention uses one fused `W_pack`."""

from tunellm.models.families.base import FAMILIES, TINY_VOCAB, Family

FAMILY = FAMILIES.register("baichuan")(
    Family(
        name="baichuan",
        model_types=("baichuan",),
        lora_targets=("W_pack", "o_proj", "gate_proj", "up_proj", "down_proj"),
        template="baichuan",
        needs_remote_code=True,
        # Baichuan config field names; tests pair them with a small remote-code model
        tiny_config=lambda: {
            "model_type": "baichuan",
            "vocab_size": TINY_VOCAB,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "model_max_length": 256,
            "rms_norm_eps": 1e-6,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
            "use_cache": False,
        },
        checkpoints=("baichuan-inc/Baichuan-13B-Chat", "baichuan-inc/Baichuan2-7B-Chat", "baichuan-inc/Baichuan-7B"),
    )
)
