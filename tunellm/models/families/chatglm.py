"""ChatGLM-6B on tunellm's native code (`tunellm_chatglm6b`, tunellm.models.chatglm6b), and model_type `chatglm`
run by the checkpoint's own code when the user sets trust_remote_code (or for the quantized releases, which
need it). Without it ChatGLM2-6B, ChatGLM3-6B and the first GLM-4 release load as native `glm`
(tunellm.models.convert.chatglm2) and get the glm family, which keeps this family's template choice and stop
tokens."""

from __future__ import annotations

from typing import Any

from tunellm.models.families.base import FAMILIES, TINY_VOCAB, Family, add_stop_tokens, pad_from_eos

# ChatGLM3 ends an assistant turn by starting the next role rather than with EOS.
ROLE_TOKENS = ("<|user|>", "<|observation|>")


def choose_template(tokenizer: Any, config: Any) -> str:
    if getattr(config, "position_encoding_2d", False):  # only the first ChatGLM-6B has 2D positions
        return "chatglm"
    token_id = tokenizer.convert_tokens_to_ids("<|user|>")
    if token_id is not None and token_id != tokenizer.unk_token_id:
        return "chatglm3"
    return "chatglm2"


def fix_tokens(tokenizer: Any, model: Any) -> None:
    pad_from_eos(tokenizer, model)
    if model is not None:
        add_stop_tokens(tokenizer, model, ROLE_TOKENS)


FAMILY = FAMILIES.register("chatglm")(
    Family(
        name="chatglm",
        model_types=("chatglm", "tunellm_chatglm6b"),  # the second: ChatGLM-6B on tunellm's native code
        lora_targets=("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
        template=choose_template,
        needs_remote_code=True,
        fix_tokens=fix_tokens,
        # ChatGLM2/3 config field names; tests pair them with a small remote-code model
        tiny_config=lambda: {
            "model_type": "chatglm",
            "padded_vocab_size": TINY_VOCAB,
            "hidden_size": 64,
            "ffn_hidden_size": 128,
            "num_layers": 2,
            "num_attention_heads": 4,
            "kv_channels": 16,
            "multi_query_attention": True,
            "multi_query_group_num": 2,
            "seq_length": 256,
            "layernorm_epsilon": 1e-5,
            "eos_token_id": 2,
            "pad_token_id": 0,
            "use_cache": False,
        },
        checkpoints=("THUDM/chatglm-6b", "THUDM/chatglm2-6b", "THUDM/chatglm3-6b", "THUDM/glm-4-9b-chat"),
    )
)
