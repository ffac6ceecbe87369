"""The `method` section: every registered tuning method's options (`Config` in `tunellm/methods/<name>.py`),
joined in one union tagged by `name`. A new method is one module plus its import line in `tunellm/methods/`.

Importing the methods here costs no torch: method modules import it only inside their functions.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

import tunellm.methods  # noqa: F401  (registers every method and its options)
from tunellm.config.section import Section
from tunellm.methods.base import METHODS

DEFAULT_METHOD = "lora"

METHOD_CONFIGS: tuple[type[Section], ...] = tuple(METHODS.get(name).Config for name in METHODS.names())
Method = Annotated[Union[METHOD_CONFIGS], Field(discriminator="name")]  # type: ignore[valid-type]  # noqa: UP007


def default_method() -> Section:
    return METHODS.get(DEFAULT_METHOD).Config()
