"""ChatGLM-6B (the first version): [Round N]\\n问：...\\n答：..., rounds counted from 0.

Source: THUDM/ChatGLM-6B ptuning/main.py (the history branch of preprocessing) and the model's
`chat`: "[Round {i}]\\n问：{query}\\n答：{response}\\n". Here the round markup is written even for a
single turn (the official code drops it when there is no history column). Its tokenizer ends every
prompt with [gMASK]<sop>; those are written before each reply when the tokenizer has them. Every
trained reply ends with EOS (<eop> for this model). No system slot: a system line comes first.
"""

from __future__ import annotations

from typing import Any

from tunellm.data.templates.base import TEMPLATES, TurnTemplate
from tunellm.data.templates.jinja import Jinja, jinja_print


@TEMPLATES.register("chatglm")
class ChatGLM(TurnTemplate):
    name = "chatglm"
    separator = "\n"

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        if self.knows_token("[gMASK]") and self.knows_token("<sop>"):
            self.assistant_start = "[gMASK]<sop>"

    def prefix(self, system: str) -> str:
        return system + "\n"

    def user(self, content: str, round_index: int, system: str) -> str:
        return f"[Round {round_index}]\n问：{content}\n答："

    def jinja_user(self) -> str:
        return jinja_print("[Round ", Jinja("round | string"), "]\n问：", Jinja("content"), "\n答：")
