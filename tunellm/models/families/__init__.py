"""Model families: each module registers one Family; `family_for(model_type)` finds it."""

from tunellm.models.families import (  # noqa: F401  (importing a family registers it)
    baichuan,
    bloom,
    chatglm,
    falcon,
    gemma,
    glm,
    gpt_neox,
    llama,
    mistral,
    qwen,
)
from tunellm.models.families.base import FAMILIES, GENERIC, Family, family_for

__all__ = ["FAMILIES", "GENERIC", "Family", "family_for"]
