"""GLM-4 as implemented natively by transformers (`glm` for glm-4-9b-chat-hf, `glm4` for GLM-4-0414).

The older remote-code GLM-4 release (model_type `chatglm`) belongs to the chatglm family.
"""

from tunellm.models.families.base import FAMILIES, Family, llama_style_tiny

FAMILY = FAMILIES.register("glm")(
    Family(
        name="glm",
        model_types=("glm", "glm4"),
        packs=True,
        lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"),
        fallback_template="chatglm3",  # same turn markers; the released checkpoints all ship a template
        tiny_config=lambda: llama_style_tiny("glm", head_dim=16),
        checkpoints=("THUDM/glm-4-9b-chat-hf", "THUDM/GLM-4-9B-0414"),
    )
)
