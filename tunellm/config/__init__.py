"""The run configuration. `RunConfig` and `load_config` are imported on first use, so that a plug-in module can
import `tunellm.config.section` (its options' base class) while `config.schema` is assembling the plug-ins' options.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunellm.config.load import load_config
    from tunellm.config.schema import RunConfig

__all__ = ["RunConfig", "load_config"]


def __getattr__(name: str) -> Any:
    if name == "RunConfig":
        from tunellm.config.schema import RunConfig

        return RunConfig
    if name == "load_config":
        from tunellm.config.load import load_config

        return load_config
    raise AttributeError(f"module 'tunellm.config' has no attribute '{name}'")
