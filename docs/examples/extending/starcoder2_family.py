"""A model family: StarCoder2 (model_type "starcoder2"), which transformers runs natively.

In the package this file is `tunellm/models/families/starcoder2.py`, registered by adding `starcoder2` to the import
list in `tunellm/models/families/__init__.py`. A family is matched by the checkpoint's `config.model_type` and says
what tunellm cannot read from the checkpoint: LoRA targets, a template when the tokenizer has no chat template,
token fixes, and a tiny random config (2 layers, hidden 64) that the family contract builds, trains and reloads.
"""

from __future__ import annotations

from tunellm.models.families.base import FAMILIES, Family, llama_style_tiny

FAMILY = FAMILIES.register("starcoder2")(
    Family(
        name="starcoder2",
        model_types=("starcoder2",),
        # its attention and MLP projections (the MLP is c_fc/c_proj, not LLaMA's gate/up/down)
        lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"),
        template="auto",  # the tokenizer's chat template where it has one (the instruct models) ...
        fallback_template="alpaca",  # ... else this one (the base models)
        packs=True,  # its attention keeps packed rows apart through position ids
        # StarCoder2's config takes LLaMA's field names; sliding_window off for a 2-layer toy
        tiny_config=lambda: llama_style_tiny("starcoder2", sliding_window=None),
        checkpoints=("bigcode/starcoder2-3b", "bigcode/starcoder2-7b"),
    )
)
