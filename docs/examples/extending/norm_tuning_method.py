"""A tuning method: norm tuning trains only the normalization layers' weights.

In the package: `tunellm/methods/norm_tuning.py` plus its line in `tunellm/methods/__init__.py`; its `Config` then
joins the config's `method` union and the method contract runs each of its `contract_variants()`. Torch and
safetensors are imported inside functions only, so that a config loads without them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from tunellm.config.section import Section
from tunellm.methods.base import METHODS, Variant, restore_tensors

WEIGHTS = "norm_weights.safetensors"


class NormTuningMethod(Section):
    name: Literal["norm_tuning"] = "norm_tuning"
    pattern: str = Field("norm", description="norm tuning: train parameters whose name contains this")


def apply(model: Any, method: NormTuningMethod, family: Any) -> Any:
    for name, param in model.named_parameters():
        param.requires_grad_(method.pattern in name)
    return model


def save(model: Any, folder: str | Path) -> None:
    from safetensors.torch import save_file

    trained = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(trained, str(Path(folder) / WEIGHTS))


def load(base_model: Any, folder: str | Path, *, trainable: bool = False) -> Any:
    from safetensors import safe_open

    restore_tensors(base_model, Path(folder))  # every .safetensors file of the folder, by parameter name
    with safe_open(str(Path(folder) / WEIGHTS), framework="pt") as saved:
        names = set(saved.keys())
    for name, param in base_model.named_parameters():
        param.requires_grad_(trainable and name in names)
    return base_model


def merge(model: Any) -> Any:
    return model  # the trained weights are the model's own


def contract_variants() -> dict[str, Variant]:
    return {"norm_tuning": Variant(NormTuningMethod(), lambda name: "norm" in name)}


Config = NormTuningMethod
supports_merge = True
weight_files = (WEIGHTS,)
METHODS.register("norm_tuning")(sys.modules[__name__])
