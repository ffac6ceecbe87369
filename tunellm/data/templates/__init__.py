"""Chat templates: one file each, registered by the import lines below."""

from __future__ import annotations

from typing import Any

from tunellm.data.templates import (
    alpaca,  # noqa: F401
    baichuan,  # noqa: F401
    chatglm,  # noqa: F401
    chatglm2,  # noqa: F401
    chatglm3,  # noqa: F401
    chatml,  # noqa: F401
    hf_chat,  # noqa: F401
    llama2,  # noqa: F401
    none,  # noqa: F401
)
from tunellm.data.templates.base import TEMPLATES, Segment, Template
from tunellm.errors import TunellmError

__all__ = ["TEMPLATES", "Segment", "Template", "get_template"]


def get_template(name: str, tokenizer: Any, family_default: str | None = None) -> Template:
    """The template called `name` built for `tokenizer`.

    `auto` is the tokenizer's own chat template when it has one, else `family_default`.
    """
    if name == "auto":
        if getattr(tokenizer, "chat_template", None):
            name = "hf_chat"
        elif family_default:
            name = family_default
        else:
            raise TunellmError(
                "template 'auto' found no chat template in the tokenizer and no model-family default",
                field="data.template",
                expected="one of " + ", ".join(TEMPLATES.names()),
                hint="set data.template, e.g. template: alpaca (or none for plain text)",
            )
    return TEMPLATES.get(name)(tokenizer)
