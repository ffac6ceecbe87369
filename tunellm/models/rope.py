"""RoPE scaling from `model.rope_scaling`, set on the transformers config before the weights load.

transformers 5 reads RoPE settings from `config.rope_parameters` (`rope_type`, `factor`, ...); the old
`rope_scaling` attribute is a deprecated alias of it. linear, yarn and llama3 also raise
`max_position_embeddings` to native x factor (yarn and llama3 check it against
`original_max_position_embeddings`). dynamic keeps it at the native length, because dynamic NTK takes it as
the length past which it starts rescaling. The scaled config is saved with a full model or a merge, so such
a folder loads scaled on its own; loading it again with the same setting changes nothing.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from tunellm.config.schema import RopeScaling
from tunellm.errors import ModelError

log = logging.getLogger(__name__)

LLAMA3_DEFAULTS = {"low_freq_factor": 1.0, "high_freq_factor": 4.0}  # Llama 3.1's own values


def no_rope_reason(config: Any) -> str | None:
    """Why RoPE scaling cannot be set on this config, or None when it can."""
    if not type(config).__module__.startswith("transformers."):
        return "its model code ships with the checkpoint and reads its own RoPE settings"
    params = getattr(config, "rope_parameters", None)
    if not params:
        return "it has no rotary position embeddings"
    if getattr(config, "alibi", False):
        return "this checkpoint uses ALiBi, not rotary position embeddings"
    if config.nested_rope_parameter_keys(params):
        return "it sets RoPE per layer type"
    return None


def apply_rope_scaling(config: Any, scaling: RopeScaling, family: str) -> None:
    """Set `scaling` on a transformers model config, in place; ModelError when the model cannot take it."""
    reason = no_rope_reason(config)
    if reason is not None:
        raise ModelError(
            f"RoPE scaling does not apply to the {family} family (model_type '{config.model_type}'): {reason}",
            field="model.rope_scaling",
            hint="leave model.rope_scaling out for this model",
        )
    current = config.rope_parameters
    if current.get("rope_type", "default") != "default":
        if current["rope_type"] == scaling.type and current.get("factor") == scaling.factor:
            return  # a full model or merge saved with this very scaling
        raise ModelError(
            f"the model already scales RoPE ({current['rope_type']}, factor {current.get('factor')}); "
            f"model.rope_scaling ({scaling.type}, factor {scaling.factor}) would replace it",
            field="model.rope_scaling",
            hint=f"leave model.rope_scaling out: the model takes {config.max_position_embeddings} positions as it is",
        )
    native = scaling.original_max_position_embeddings or config.max_position_embeddings
    params = {**current, "rope_type": scaling.type, "factor": scaling.factor}
    if scaling.type in ("yarn", "llama3"):
        params["original_max_position_embeddings"] = native
    extra = LLAMA3_DEFAULTS if scaling.type == "llama3" else {"beta_fast": None, "beta_slow": None}
    for key, default in extra.items():
        value = getattr(scaling, key)
        if value is not None or default is not None:
            params[key] = value if value is not None else default
    config.max_position_embeddings = native if scaling.type == "dynamic" else int(native * scaling.factor)
    config.rope_parameters = params
    try:
        config.standardize_rope_params()
        config.validate_rope()
    except (KeyError, ValueError) as error:
        raise ModelError(f"transformers refuses this RoPE scaling: {error}", field="model.rope_scaling") from None


def position_limit(config: Any) -> int | None:
    """How many positions the model takes as configured; None when its config does not say."""
    limit = getattr(config, "max_position_embeddings", None)
    params = getattr(config, "rope_parameters", None) or {}
    if limit is not None and params.get("rope_type") == "dynamic":
        return int(limit * params["factor"])
    return limit


def check_context_length(config: Any, scaling: RopeScaling | None, family: str, cutoff_len: int) -> None:
    """Apply `scaling` to `config` (a throwaway copy: errors surface before any data work), then warn when
    `data.cutoff_len` passes the positions the model will take."""
    if scaling is not None:
        apply_rope_scaling(config, scaling, family)
        if scaling.type == "dynamic":
            log.warning(
                "model.rope_scaling.type=dynamic rescales RoPE by each batch's length, so training sees other "
                "frequencies than inference on longer inputs; linear or yarn suit fine-tuning better"
            )
    limit = position_limit(config)
    if limit is None or cutoff_len <= limit:
        return
    if scaling is None:
        log.warning(
            "data.cutoff_len=%d passes the %d positions the model was trained on: samples longer than that train "
            "on positions it never saw. To extend it, set model.rope_scaling='{type: linear, factor: %d}' "
            "(or type yarn)",
            cutoff_len,
            limit,
            math.ceil(cutoff_len / limit),
        )
    else:
        log.warning(
            "data.cutoff_len=%d passes the %d positions model.rope_scaling gives; set model.rope_scaling.factor=%d",
            cutoff_len,
            limit,
            math.ceil(scaling.factor * cutoff_len / limit),
        )
