"""ChatGLM2-6B: [Round N]\\n\\n问：...\\n\\n答：..., rounds counted from 1.

Source: THUDM/chatglm2-6b tokenization_chatglm.py `build_prompt` and LLaMA-Factory's `chatglm2`
template (prefix tokens [gMASK]sop, separator "\\n\\n"). The prefix is written only when the
tokenizer has those tokens. No system slot: a system line comes first, after the prefix.
"""

from __future__ import annotations

from typing import Any

from tunellm.data.templates.base import TEMPLATES, TurnTemplate
from tunellm.data.templates.jinja import Jinja, jinja_print


@TEMPLATES.register("chatglm2")
class ChatGLM2(TurnTemplate):
    name = "chatglm2"
    separator = "\n\n"

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        if self.knows_token("[gMASK]") and self.knows_token("sop"):
            self.begin = "[gMASK]sop"

    def prefix(self, system: str) -> str:
        return system + "\n\n"

    def user(self, content: str, round_index: int, system: str) -> str:
        return f"[Round {round_index + 1}]\n\n问：{content}\n\n答："

    def jinja_user(self) -> str:
        return jinja_print("[Round ", Jinja("(round + 1) | string"), "]\n\n问：", Jinja("content"), "\n\n答：")
