"""What a tuning method plug-in provides, and the registry the train loop looks methods up in.

A method is a module with `apply(model, method_config, family)` returning the model to train,
`save(model, folder)` writing only what the method trained, and `load(base_model, folder)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from torch import nn

from tunellm.registry import Registry


class Method(Protocol):
    def apply(self, model: nn.Module, method: Any, family: Any) -> nn.Module: ...

    def save(self, model: nn.Module, folder: str | Path) -> None: ...

    def load(self, base_model: nn.Module, folder: str | Path, *, trainable: bool = False) -> nn.Module: ...


METHODS: Registry[Method] = Registry("tuning method")


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
