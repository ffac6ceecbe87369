"""LoRA through peft: low-rank adapters on the family's target modules; only adapters are saved.

Options: DoRA, rsLoRA, LoRA+ (a larger learning rate for B) and PiSSA init. PiSSA moves the principal part
of each weight into the adapter, so a trained PiSSA adapter only fits the changed base; checkpoints therefore
hold it converted to a plain LoRA adapter of rank 2r (fits the original base, merges as usual), and the raw
adapter under state/ for resume.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import warnings
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import AliasChoices, Field, model_validator

from tunellm.config.section import Section
from tunellm.errors import ConfigError, ModelError
from tunellm.methods.base import METHODS, Variant, decoder_layers, quiet_peft, restore_peft

if TYPE_CHECKING:
    from peft import PeftModel
    from torch import nn

    from tunellm.models.families.base import Family


class LoraMethod(Section):
    name: Literal["lora"] = "lora"
    r: int = Field(8, gt=0, validation_alias=AliasChoices("r", "lora_rank"), description="LoRA rank")
    lora_alpha: float = Field(16, gt=0, description="LoRA scaling numerator (scale = lora_alpha / r)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: str | list[str] = Field(
        "auto", description="modules to adapt: auto (the family's default), all-linear, or a list of names"
    )
    modules_to_save: list[str] = Field(default_factory=list, description="modules trained in full beside the adapter")
    layers: int | None = Field(
        None, gt=0, description="adapt only the last N decoder layers: the backward pass stops below them; empty: all"
    )
    use_dora: bool = Field(False, description="DoRA: learn each weight's magnitude apart from its LoRA direction")
    use_rslora: bool = Field(False, description="rsLoRA: scale by lora_alpha / sqrt(r), steadier at high rank")
    init_lora_weights: Literal["default", "gaussian", "pissa"] = Field(
        "default",
        description="adapter init; pissa starts from the weights' principal singular vectors (saved as plain LoRA)",
    )
    pissa_niter: int | None = Field(
        16, ge=1, description="PiSSA: fast randomized-SVD iterations; empty for an exact SVD (slow on big models)"
    )
    loraplus_lr_ratio: float | None = Field(
        None, gt=0, description="LoRA+: learning rate of the B matrices = learning_rate x this (the paper uses 16)"
    )

    @model_validator(mode="after")
    def pissa_without_dora(self) -> LoraMethod:
        if self.init_lora_weights == "pissa" and self.use_dora:
            raise ValueError("PiSSA init and DoRA cannot be combined (peft converts PiSSA to LoRA, not to DoRA)")
        return self


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
PISSA_STATE = Path("state") / "pissa"  # the raw trained PiSSA adapter, beside the converted one
# model -> folder holding its PiSSA adapter as initialised, which peft's conversion subtracts
_pissa_init: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


def target_modules(method: LoraMethod, family: Family) -> str | list[str]:
    targets = family.lora_targets if method.target_modules == "auto" else method.target_modules
    return targets if isinstance(targets, str) else list(targets)


def linear_names(model: nn.Module) -> list[str]:
    """Distinct leaf names of linear layers, for error messages."""
    from torch import nn

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
        use_dora=method.use_dora,
        use_rslora=method.use_rslora,
        init_lora_weights=peft_init(method),
        bias="none",
        task_type="CAUSAL_LM",
        **top_layers(model, method),
    )
    try:
        with quiet_peft():
            wrapped = get_peft_model(model, config)
    except ValueError as error:
        if "not found in the base model" not in str(error):
            raise
        raise ConfigError(
            f"LoRA target modules {targets} are not in this {family.name} model",
            field="method.target_modules",
            expected="names of linear layers: " + ", ".join(linear_names(model)),
            hint="use target_modules: all-linear, or list some of the names above",
        ) from None
    if method.init_lora_weights == "pissa":
        keep_pissa_init(wrapped)
    return wrapped


def top_layers(model: nn.Module, method: LoraMethod) -> dict[str, Any]:
    """peft's options that put the adapters on the last `method.layers` decoder layers only (none: all layers)."""
    if method.layers is None:
        return {}
    name, layers = decoder_layers(model, "method.layers", "leave method.layers empty to adapt every layer")
    if method.layers > len(layers):
        raise ConfigError(
            f"layers={method.layers} but the model has {len(layers)} decoder layers ({name})",
            field="method.layers",
            expected=f"1 to {len(layers)}, or empty for all",
        )
    return {
        "layers_to_transform": list(range(len(layers) - method.layers, len(layers))),
        "layers_pattern": name.rsplit(".", 1)[-1],
    }


def peft_init(method: LoraMethod) -> bool | str:
    if method.init_lora_weights == "pissa":
        return f"pissa_niter_{method.pissa_niter}" if method.pissa_niter else "pissa"
    return True if method.init_lora_weights == "default" else method.init_lora_weights


def keep_pissa_init(model: PeftModel) -> None:
    """Save the freshly initialised PiSSA adapter (as peft's conversion wants it) for the life of `model`."""
    folder = tempfile.mkdtemp(prefix="tunellm-pissa-init-")
    config = model.peft_config["default"]
    init = config.init_lora_weights
    config.init_lora_weights = True  # peft's recipe: the initial adapter is saved as a plain one
    model.save_pretrained(folder, safe_serialization=True)
    config.init_lora_weights = init
    _pissa_init[model] = folder
    weakref.finalize(model, shutil.rmtree, folder, True)


def param_groups(model: nn.Module, method: LoraMethod, train: Any) -> list[dict[str, Any]] | None:
    """LoRA+: B matrices learn `loraplus_lr_ratio` times faster than the rest; None keeps the default groups."""
    if method.loraplus_lr_ratio is None:
        return None
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            is_b = "lora_B" in name or "lora_embedding_B" in name
            decays = param.ndim >= 2 and not name.endswith(".bias")
            groups.setdefault((is_b, decays), []).append(param)
    result = []
    for (is_b, decays), params in sorted(groups.items()):  # the base-rate groups first: the log reads group 0
        lr = train.learning_rate * (method.loraplus_lr_ratio if is_b else 1.0)
        result.append({"params": params, "lr": lr, "weight_decay": train.weight_decay if decays else 0.0})
    return result


def save_adapter(model: PeftModel, folder: str | Path) -> None:
    """Write adapter_config.json and adapter_model.safetensors (adapter and modules_to_save weights only).

    A PiSSA adapter is written converted to plain LoRA, and as trained under state/pissa for `restore`.
    """
    init = _pissa_init.get(model)
    if init is None:
        model.save_pretrained(str(folder), safe_serialization=True)
        return
    model.save_pretrained(str(Path(folder) / PISSA_STATE), safe_serialization=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*PiSSA.*")
        model.save_pretrained(str(folder), safe_serialization=True, path_initial_model_for_weight_conversion=init)


def restore(model: PeftModel, folder: str | Path) -> None:
    """Put a checkpoint's trained adapter back into `model` in place (resume): the raw one for PiSSA."""
    restore_peft(model, Path(folder) / PISSA_STATE if model in _pissa_init else Path(folder))


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
    with quiet_peft():
        return PeftModel.from_pretrained(base_model, str(folder), is_trainable=trainable)


def merge(model: PeftModel) -> nn.Module:
    """Fold the adapter into the base weights and drop the peft wrapper."""
    with quiet_peft():
        return model.merge_and_unload()


def contract_variants() -> dict[str, Variant]:
    options = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0}
    adapters = Variant(LoraMethod(**options), lambda name: "lora_" in name)
    return {
        "lora": adapters,
        "dora": adapters._replace(options=LoraMethod(**options, use_dora=True)),
        "rslora": adapters._replace(options=LoraMethod(**options, use_rslora=True)),
        # PiSSA comes back as plain LoRA of rank 2r on the original base: equal up to float rounding
        "pissa": adapters._replace(options=LoraMethod(**options, init_lora_weights="pissa"), tolerance=1e-5),
        "loraplus": adapters._replace(options=LoraMethod(**options, loraplus_lr_ratio=16)),
        "top_layer": adapters._replace(options=LoraMethod(**options, layers=1)),
    }


Config = LoraMethod
supports_merge = True
weight_files = ("adapter_model.safetensors",)
save = save_adapter
load = load_adapter
METHODS.register("lora")(sys.modules[__name__])
