"""A chat template: Vicuna v1.1's turns, as FastChat writes them: "{system} USER: Hi ASSISTANT: Hello</s>USER: ...".

In the package this file is `tunellm/data/templates/vicuna.py`, registered by adding `vicuna` to the import list in
`tunellm/data/templates/__init__.py`. A `TurnTemplate` gives its text pieces; `render` assembles them the same way
for training (replies trainable) and for generation, and `chat_template()` exports them as Jinja for a merged model.
"""

from __future__ import annotations

from tunellm.data.record import Turn
from tunellm.data.templates.base import TEMPLATES, TurnTemplate
from tunellm.data.templates.tools import reply_text

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@TEMPLATES.register("vicuna")
class Vicuna(TurnTemplate):
    name = "vicuna"
    default_system = SYSTEM  # for conversations that carry no system text
    assistant_start = "ASSISTANT:"  # the end of the prompt: the model continues from here

    def prefix(self, system: str) -> str:
        return system + " "

    def user(self, content: str, round_index: int, system: str) -> str:
        return f"USER: {content} "

    def response(self, turn: Turn) -> str:
        """The trained part: the reply (with its tool calls, as text) after a space, then EOS."""
        return " " + reply_text(turn) + self.eos
