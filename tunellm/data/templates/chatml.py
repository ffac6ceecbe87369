"""ChatML as Qwen writes it: <|im_start|>role\\n...<|im_end|>\\n.

Source: Qwen2.5-Instruct's tokenizer_config.json chat_template and LLaMA-Factory's `qwen` template
(tool list in the system message, <tool_call> JSON in the reply, tool results as a user message
wrapped in <tool_response>). Differences: no default system line (the model family supplies one),
and consecutive tool results are separate user messages rather than one. The reply is trained up
to and including <|im_end|>, which is the end of turn even when the tokenizer's EOS differs (as
LLaMA-Factory's replace_eos); the newline after it is prompt.
"""

from __future__ import annotations

from tunellm.data.record import Turn
from tunellm.data.templates.base import TEMPLATES, TurnTemplate
from tunellm.data.templates.tools import reply_text

END = "<|im_end|>"


@TEMPLATES.register("chatml")
class ChatML(TurnTemplate):
    name = "chatml"
    assistant_start = "<|im_start|>assistant\n"
    separator = "\n"
    trailing = "\n"

    @property
    def stop_strings(self) -> list[str]:
        return [END] if self.eos == END else [END, self.eos]

    def prefix(self, system: str) -> str:
        return f"<|im_start|>system\n{system}{END}\n"

    def user(self, content: str, round_index: int, system: str) -> str:
        return f"<|im_start|>user\n{content}{END}\n"

    def response(self, turn: Turn) -> str:
        return reply_text(turn) + END
