"""LoRA through peft: low-rank adapters on the family's target modules; only adapters are saved."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from tunellm.config.methods import LoraMethod
from tunellm.errors import ConfigError, ModelError
from tunellm.methods.base import METHODS

if TYPE_CHECKING:
    from peft import PeftModel

    from tunellm.models.families.base import Family

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def target_modules(method: LoraMethod, family: Family) -> str | list[str]:
    targets = family.lora_targets if method.target_modules == "auto" else method.target_modules
    return targets if isinstance(targets, str) else list(targets)


def linear_names(model: nn.Module) -> list[str]:
    """Distinct leaf names of linear layers, for error messages."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)})


def apply(model: nn.Module, method: LoraMethod, family: Family) -> PeftModel:
    """Wrap `model` in a peft LoRA model; the base weights are frozen, adapters (and modules_to_save) train."""
    from peft import LoraConfig, get_peft_model

    targets = target_modules(method, family)
    if isinstance(targets, str) and targets != "all-linear":
        raise ConfigError(
            f"unknown target_modules '{targets}'", field="method.target_modules", expected="auto, all-linear or a list"
        )
    config = LoraConfig(
        r=method.r,
        lora_alpha=method.lora_alpha,
        lora_dropout=method.lora_dropout,
        target_modules=targets,
        modules_to_save=list(method.modules_to_save) or None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        with warnings.catch_warnings():
            # peft reads the attribute transformers 5.23 deprecated in favour of is_activation_checkpointing
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(model, config)
    except ValueError as error:
        if "not found in the base model" not in str(error):
            raise
        raise ConfigError(
            f"LoRA target modules {targets} are not in this {family.name} model",
            field="method.target_modules",
            expected="names of linear layers: " + ", ".join(linear_names(model)),
            hint="use target_modules: all-linear, or list some of the names above",
        ) from None


def save_adapter(model: PeftModel, folder: str | Path) -> None:
    """Write adapter_config.json and adapter_model.safetensors (adapter and modules_to_save weights only)."""
    model.save_pretrained(str(folder), safe_serialization=True)


def load_adapter(base_model: nn.Module, folder: str | Path, *, trainable: bool = False) -> PeftModel:
    """Attach a saved adapter to a freshly loaded base model; `trainable=True` to resume training it."""
    from peft import PeftModel

    missing = [name for name in ADAPTER_FILES if not (Path(folder) / name).is_file()]
    if missing:
        present = sorted(p.name for p in Path(folder).iterdir()) if Path(folder).is_dir() else []
        raise ModelError(
            "adapter files missing: " + ", ".join(missing),
            file=str(folder),
            expected="a folder written by save_adapter",
            hint="the folder holds: " + (", ".join(present) or "nothing"),
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return PeftModel.from_pretrained(base_model, str(folder), is_trainable=trainable)


def merge(model: PeftModel) -> nn.Module:
    """Fold the adapter into the base weights and drop the peft wrapper."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return model.merge_and_unload()


Config = LoraMethod
supports_merge = True
save = save_adapter
load = load_adapter
METHODS.register("lora")(sys.modules[__name__])
