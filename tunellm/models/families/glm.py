"""GLM-4 as implemented natively by transformers (`glm` for glm-4-9b-chat-hf, `glm4` for GLM-4-0414), and
ChatGLM2/3 checkpoints converted to `glm` at load (tunellm.models.convert.chatglm2).

The older remote-code GLM-4 release and ChatGLM-6B (model_type `chatglm`) belong to the chatglm family when
their own code is trusted. A converted ChatGLM keeps its template choice (chatglm2 or chatglm3, by tokenizer).
"""

from typing import Any

from tunellm.models.families import chatglm
from tunellm.models.families.base import FAMILIES, Family, auto_template, converted_from, llama_style_tiny

FALLBACK = "chatglm3"  # same turn markers; the released checkpoints all ship a template


def choose_template(tokenizer: Any, config: Any) -> str:
    if converted_from(config) == "chatglm":
        return chatglm.choose_template(tokenizer, config)
    return auto_template(tokenizer, FALLBACK)


FAMILY = FAMILIES.register("glm")(
    Family(
        name="glm",
        model_types=("glm", "glm4"),
        packs=True,
        lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"),
        template=choose_template,
        fallback_template=FALLBACK,
        fix_tokens=chatglm.fix_tokens,  # GLM ends a reply by starting the next role, as ChatGLM3 does
        tiny_config=lambda: llama_style_tiny("glm", head_dim=16),
        checkpoints=("THUDM/glm-4-9b-chat-hf", "THUDM/GLM-4-9B-0414", "THUDM/chatglm2-6b", "THUDM/chatglm3-6b"),
    )
)
