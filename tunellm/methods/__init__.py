"""Tuning methods: each module registers itself in METHODS by name (see base.py for the contract).

The import order is the order `tunellm config example` lists them in: lora, the default, first.
"""

# isort: off
from tunellm.methods import lora  # noqa: F401  (importing a method registers it)
from tunellm.methods import qlora  # noqa: F401
from tunellm.methods import ptuning_v2  # noqa: F401
from tunellm.methods import freeze  # noqa: F401
from tunellm.methods import full  # noqa: F401
# isort: on

from tunellm.methods.base import METHODS, Method, enable_activation_checkpointing

__all__ = ["METHODS", "Method", "enable_activation_checkpointing"]
