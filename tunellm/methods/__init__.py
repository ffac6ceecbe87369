"""Tuning methods: each module registers itself in METHODS by name (see base.py for the contract)."""

from tunellm.methods import freeze, full, lora, ptuning_v2, qlora  # noqa: F401  (importing a method registers it)
from tunellm.methods.base import METHODS, Method, enable_activation_checkpointing

__all__ = ["METHODS", "Method", "enable_activation_checkpointing"]
