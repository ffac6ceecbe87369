"""ChatGLM3-6B: <|system|>, <|user|>, <|assistant|>, <|observation|> role markers.

Source: THUDM/chatglm3-6b tokenization_chatglm.py (`build_single_message`: role token, then
"\\n", then the text) and LLaMA-Factory's `chatglm3` template (prefix [gMASK]sop, reply "\\n{content}",
stop words <|user|> and <|observation|>). The model ends a turn by starting the next role; here every
trained reply also ends with EOS. Tool calls use the shared <tool_call> JSON text, not ChatGLM3's own
code-style calls; tool results go in an <|observation|> turn.
"""

from __future__ import annotations

from typing import Any

from tunellm.data.record import Turn
from tunellm.data.templates.base import TEMPLATES, TurnTemplate
from tunellm.data.templates.tools import reply_text


@TEMPLATES.register("chatglm3")
class ChatGLM3(TurnTemplate):
    name = "chatglm3"
    assistant_start = "<|assistant|>"

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        if self.knows_token("[gMASK]") and self.knows_token("sop"):
            self.begin = "[gMASK]sop"

    @property
    def stop_strings(self) -> list[str]:
        return [self.eos, "<|user|>", "<|observation|>"]

    def prefix(self, system: str) -> str:
        return f"<|system|>\n{system}"

    def user(self, content: str, round_index: int, system: str) -> str:
        return f"<|user|>\n{content}"

    def tool(self, turn: Turn, round_index: int, system: str) -> str:
        return f"<|observation|>\n{turn.content}"

    def response(self, turn: Turn) -> str:
        return "\n" + reply_text(turn) + self.eos
