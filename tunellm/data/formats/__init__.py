"""Data format plug-ins, one file each, registered by importing it here.

Auto-detection asks each format's `sniff` in this import order and takes the first that says yes:
formats recognised by a list of messages come first, then those recognised by one field.
"""

# isort: off
from tunellm.data.formats import openai  # noqa: F401
from tunellm.data.formats import sharegpt  # noqa: F401
from tunellm.data.formats import alpaca  # noqa: F401
from tunellm.data.formats import promptcblue  # noqa: F401
from tunellm.data.formats import chatglm  # noqa: F401
from tunellm.data.formats import context_target  # noqa: F401
from tunellm.data.formats import text  # noqa: F401
# isort: on

from tunellm.data.formats.base import FORMATS, Format, ReadOptions

__all__ = ["FORMATS", "Format", "ReadOptions"]
