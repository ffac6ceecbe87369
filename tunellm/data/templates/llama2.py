"""Llama-2-chat: <s>[INST] <<SYS>>\\n...\\n<</SYS>>\\n\\n... [/INST] ... </s>.

Source: the chat_template in meta-llama/Llama-2-7b-chat-hf's tokenizer_config.json (text for text:
the system block inside the first [INST], user and reply text stripped, " {reply} " + EOS), which
follows Meta's llama/generation.py. BOS and EOS are the tokenizer's own.
"""

from __future__ import annotations

from tunellm.data.record import Turn
from tunellm.data.templates.base import TEMPLATES, TurnTemplate
from tunellm.data.templates.jinja import Jinja, jinja_print
from tunellm.data.templates.tools import reply_text


@TEMPLATES.register("llama2")
class Llama2(TurnTemplate):
    name = "llama2"

    def prefix(self, system: str) -> str:
        return ""  # written inside the first [INST] by `user`

    def user(self, content: str, round_index: int, system: str) -> str:
        block = f"<<SYS>>\n{system}\n<</SYS>>\n\n" if system else ""
        return f"{self.bos}[INST] {(block + content).strip()} [/INST]"

    def response(self, turn: Turn) -> str:
        return f" {reply_text(turn).strip()} {self.eos}"

    def jinja_user(self) -> str:
        block = r'("<<SYS>>\n" + system + "\n<</SYS>>\n\n" if system else "")'
        return jinja_print(self.bos, "[INST] ", Jinja(f"({block} + content) | trim"), " [/INST]")

    def jinja_response(self) -> str:
        return jinja_print(" ", Jinja("content | trim"), " " + self.eos)
