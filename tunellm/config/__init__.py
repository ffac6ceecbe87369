from tunellm.config.load import load_config
from tunellm.config.schema import RunConfig

__all__ = ["RunConfig", "load_config"]
