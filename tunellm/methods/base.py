"""What a tuning method plug-in provides, and the registry the train loop looks methods up in.

A method is a module registered in METHODS under its config's `name`, with:
- `Config`: its options class (a `tunellm.config.section.Section` with `name: Literal[...]`), declared in the
  method's own module; `tunellm/config/methods.py` joins every registered method's `Config` into the config's
  `method` union, so a method module imports torch (and anything heavy) only inside its functions, and imports
  nothing of `tunellm.config` but `section` at module level;
- `weight_files`: the files `save` writes the trained weights to (a checkpoint holding none of them is incomplete);
- `contract_variants()`: {id: Variant(options, trains)} that `tests/contracts/test_methods.py` runs the contract
  over (apply, train, save, reload, resume, merge); a method without variants fails that test;
- `apply(model, config, family)`: the model to train, with only the method's parameters trainable;
- `save(model, folder)`: write what inference needs (adapter, trained tensors or the whole model);
- `load(base_model, folder, trainable=False)`: the trained model again, from a fresh base model;
- `supports_merge` and `merge(model)`: a plain transformers model holding the trained weights.
Optional hooks, looked up with `getattr`: `check(run_config)` fails before anything loads (QLoRA without CUDA);
`load_options(config)` adds `from_pretrained` arguments (quantization); `param_groups(model, config, train)`
and `optimizer(groups, config, train)` shape the optimizer (LoRA+, paged 8-bit AdamW); `restore(model, folder)`
puts a checkpoint's trained weights back in place for resume, when `save` writes another form (PiSSA);
`uses_bitsandbytes = True` keeps bitsandbytes importable in a `tunellm train` process (the others block it:
cli/process.py).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from tunellm import host_memory
from tunellm.errors import ModelError
from tunellm.registry import Registry

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)


class Variant(NamedTuple):
    """Options the method contract runs with; `trains(name)`: whether a parameter may train (some must);
    `tolerance`: how far a reloaded model's logits may stray from the trained one's (0: identical)."""

    options: Any
    trains: Callable[[str], bool]
    tolerance: float = 0.0


class Method(Protocol):
    Config: type
    supports_merge: bool
    weight_files: tuple[str, ...]

    def contract_variants(self) -> dict[str, Variant]: ...

    def apply(self, model: nn.Module, config: Any, family: Any) -> nn.Module: ...

    def save(self, model: nn.Module, folder: str | Path) -> None: ...

    def load(self, base_model: nn.Module, folder: str | Path, *, trainable: bool = False) -> nn.Module: ...

    def merge(self, model: nn.Module) -> nn.Module: ...


METHODS: Registry[Method] = Registry("tuning method")


def restore_peft(model: Any, folder: Path) -> None:
    """Load a peft adapter's saved weights into `model` (a PeftModel) in place: resume and init_adapter."""
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelError(f"no {weights.name} in the folder", file=str(folder), expected="a peft adapter folder")
    adapter = model.active_adapter
    try:
        result = set_peft_model_state_dict(model, load_peft_weights(str(folder), device="cpu"), adapter_name=adapter)
    except RuntimeError as error:  # shape mismatch: another rank or base model
        raise ModelError(
            f"adapter weights do not fit this model: {str(error).splitlines()[-1].strip()}",
            file=str(folder),
            hint="use an adapter trained with the same base model, rank and target modules",
        ) from None
    # peft loads a prompt-learning prefix itself and still reports its key as unexpected
    check_fits([key for key in result.unexpected_keys if key != "prompt_embeddings"], folder)
    missing = [key for key in result.missing_keys if f".{adapter}." in key]
    if missing:
        log.warning("%s lacks %d adapter weights (left as initialised), e.g. %s", folder, len(missing), missing[0])


def restore_tensors(model: nn.Module, folder: Path) -> None:
    """Load every .safetensors file of `folder` into `model` in place, by parameter name (freeze, full)."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError("no .safetensors weights in the folder", file=str(folder))
    unexpected: list[str] = []
    for file in files:
        unexpected += model.load_state_dict(load_file(file), strict=False).unexpected_keys
    check_fits(unexpected, folder)


def check_fits(unexpected: list[str], folder: Path) -> None:
    if unexpected:
        raise ModelError(
            f"weights do not fit this model: {', '.join(unexpected[:5])}",
            file=str(folder),
            hint="the checkpoint was trained with other target modules or another base model",
        )


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """peft 0.21 reads `is_gradient_checkpointing`, which transformers 5.23 deprecated: a warning on every wrap,
    load and merge that users can do nothing about."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def hook(method: Any, name: str) -> Any:
    """The method's optional hook `name`, or None."""
    return getattr(method, name, None)


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing, before or after `apply`.

    Frozen embeddings produce outputs without grad, so the embedding output is made to require
    grad; otherwise adapters in checkpointed layers would receive no gradient.
    """
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.23
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    if getattr(model.config, "use_cache", False):  # a KV cache is useless while training and clashes with it
        model.config.use_cache = False
    if next(model.parameters()).device.type == "cpu":  # else glibc keeps most of what checkpointing frees
        host_memory.return_large_blocks_to_os()


def decoder_layers(model: nn.Module, field: str, hint: str) -> tuple[str, nn.ModuleList]:
    """(name, list) of the model's stack of decoder layers: the longest ModuleList, as long as the config says.
    `field` and `hint` are for the error when there is none: the option that asked for layers, and what to do."""
    from torch import nn

    expected = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "num_layers", None)
    stacks = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.ModuleList)]
    stacks = [(name, module) for name, module in stacks if expected is None or len(module) == expected]
    if not stacks:
        raise ModelError(f"cannot find the decoder layers of this {type(model).__name__}", field=field, hint=hint)
    return max(stacks, key=lambda item: len(item[1]))
