"""Baichuan chat models: a user marker token, the query, an assistant marker token, the reply.

Source: LLaMA-Factory's `baichuan`/`baichuan2` templates and Baichuan's generation_utils.py
`build_chat_input`, which write token ids 195 (user) and 196 (assistant) from generation_config.
Those ids are <reserved_106>/<reserved_107> in Baichuan2's vocabulary and other <reserved_N> names in
Baichuan-13B's, so the names are read from the tokenizer when ids 195/196 are reserved tokens, else
<reserved_106>/<reserved_107>. A system line comes first, as is. Every trained reply ends with EOS.
"""

from __future__ import annotations

import re
from typing import Any

from tunellm.data.templates.base import TEMPLATES, TurnTemplate

USER_ID, ASSISTANT_ID = 195, 196


def marker_tokens(tokenizer: Any) -> tuple[str, str]:
    try:
        names = tokenizer.convert_ids_to_tokens([USER_ID, ASSISTANT_ID])
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):  # a small or unusual vocabulary
        names = []
    if len(names) == 2 and all(isinstance(n, str) and re.fullmatch(r"<reserved_\d+>", n) for n in names):
        return names[0], names[1]
    return "<reserved_106>", "<reserved_107>"


@TEMPLATES.register("baichuan")
class Baichuan(TurnTemplate):
    name = "baichuan"

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        self.user_token, self.assistant_start = marker_tokens(tokenizer)

    def user(self, content: str, round_index: int, system: str) -> str:
        return f"{self.user_token}{content}"
