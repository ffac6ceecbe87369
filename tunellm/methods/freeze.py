"""Freeze tuning: the last N decoder layers (and any parameters named in trainable_modules) train in full;
everything else stays frozen. Checkpoints hold only the trained tensors, applied to the base at load.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from tunellm.config.section import Section
from tunellm.errors import ConfigError, ModelError
from tunellm.methods.base import METHODS, Variant, decoder_layers, restore_tensors

if TYPE_CHECKING:
    from torch import nn

WEIGHTS_FILE = "trained_weights.safetensors"


class FreezeMethod(Section):
    name: Literal["freeze"] = "freeze"
    trainable_layers: int = Field(
        2, ge=0, description="freeze: train the last N decoder layers in full (0 with trainable_modules only)"
    )
    trainable_modules: list[str] = Field(
        default_factory=list,
        description="freeze: also train parameters whose name contains any of these (e.g. mlp, lm_head, norm)",
    )

    @model_validator(mode="after")
    def trains_something(self) -> FreezeMethod:
        if self.trainable_layers == 0 and not self.trainable_modules:
            raise ValueError("freeze with trainable_layers=0 and no trainable_modules would train nothing")
        return self


def apply(model: nn.Module, method: FreezeMethod, family: Any) -> nn.Module:
    """Train the last `trainable_layers` layers and the parameters matching `trainable_modules`."""
    model.requires_grad_(False)
    if method.trainable_layers:
        name, layers = decoder_layers(
            model, "method.trainable_layers", "set trainable_layers: 0 and name the modules in trainable_modules"
        )
        if method.trainable_layers > len(layers):
            raise ConfigError(
                f"trainable_layers={method.trainable_layers} but the model has {len(layers)} layers ({name})",
                field="method.trainable_layers",
                hint="use method=full to train every layer",
            )
        for layer in layers[len(layers) - method.trainable_layers :]:
            layer.requires_grad_(True)
    unmatched = set(method.trainable_modules)
    for name, param in model.named_parameters():
        hits = {pattern for pattern in method.trainable_modules if pattern in name}
        if hits:
            param.requires_grad_(True)
            unmatched -= hits
    if unmatched:
        raise ConfigError(
            f"no parameter name contains {', '.join(sorted(unmatched))}",
            field="method.trainable_modules",
            hint="parameter names look like " + ", ".join(n for n, _ in list(model.named_parameters())[:3]),
        )
    return model


def save(model: nn.Module, folder: str | Path) -> None:
    """trained_weights.safetensors: the trainable tensors only, by parameter name."""
    from safetensors.torch import save_file

    tensors = {
        name: param.detach().to("cpu", copy=True).contiguous()
        for name, param in model.named_parameters()
        if param.requires_grad
    }
    save_file(tensors, str(Path(folder) / WEIGHTS_FILE), metadata={"format": "pt", "method": "freeze"})


def load(base_model: nn.Module, folder: str | Path, *, trainable: bool = False) -> nn.Module:
    """The base model with the checkpoint's trained tensors in place."""
    from safetensors import safe_open

    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise ModelError(f"no {WEIGHTS_FILE} in the checkpoint", file=str(folder), expected="a freeze checkpoint")
    restore_tensors(base_model, Path(folder))
    if trainable:
        with safe_open(str(path), framework="pt") as weights:
            names = set(weights.keys())
        for name, param in base_model.named_parameters():
            param.requires_grad_(name in names)
    return base_model


def merge(model: nn.Module) -> nn.Module:
    return model  # the trained tensors are the model's own


def contract_variants() -> dict[str, Variant]:
    return {
        "freeze": Variant(FreezeMethod(trainable_layers=1), lambda name: ".layers.1." in name),
        "freeze_modules": Variant(
            FreezeMethod(trainable_layers=0, trainable_modules=["mlp"]), lambda name: ".mlp." in name
        ),
    }


Config = FreezeMethod
supports_merge = True
weight_files = (WEIGHTS_FILE,)
METHODS.register("freeze")(sys.modules[__name__])
