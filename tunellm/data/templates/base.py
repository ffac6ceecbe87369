"""A chat template renders a conversation as text segments, each marked trainable or not.

The same `render` serves training (every assistant reply is a trainable segment that ends with the
end-of-turn / EOS text) and generation (the conversation ends with a user or tool turn and the
output ends with the assistant prefix), so the two cannot drift apart.

Tool use, in every template that has no markup of its own for it, follows the Qwen2.5 / Hermes
text convention (`tools.py`). `chat_template()` gives the same rendering as a Jinja chat template, for a merged
model's tokenizer: `TurnTemplate` gets it from `jinja.py`.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, NamedTuple

from tunellm.data.record import Conversation, Source, ToolCall, Turn
from tunellm.data.templates.jinja import TurnJinja
from tunellm.data.templates.tools import reply_text, system_with_tools, tool_result_text
from tunellm.errors import DataError, TunellmError
from tunellm.registry import Registry


class Segment(NamedTuple):
    text: str
    trainable: bool


TEMPLATES: Registry[type[Template]] = Registry("template")


def check_shape(conversation: Conversation, for_generation: bool) -> None:
    source: Source = conversation.source
    where = {"file": source.file, "line": source.line, "index": source.index}
    if not conversation.turns:
        raise DataError("the conversation has no turns", **where)
    if for_generation and conversation.turns[-1].role == "assistant":
        raise DataError(
            "a conversation to generate from must end with a user or tool turn",
            expected="the last turn's role to be user or tool",
            **where,
        )


def merge(segments: list[Segment]) -> list[Segment]:
    """Drop empty segments and join neighbouring prompt segments (they tokenize closer to the whole text).

    Trainable segments are never joined: each assistant reply stays one segment, which masking
    (mask_history) and max_target_length work on.
    """
    merged: list[Segment] = []
    for segment in segments:
        if not segment.text:
            continue
        if merged and not segment.trainable and not merged[-1].trainable:
            merged[-1] = Segment(merged[-1].text + segment.text, False)
        else:
            merged.append(segment)
    return merged


PROBE = Conversation(
    turns=[
        Turn("user", "Q1"),
        Turn("assistant", "A1", tool_calls=[ToolCall("lookup", '{"q": 1}')]),
        Turn("tool", "R1", name="lookup"),
        Turn("assistant", "A2"),
        Turn("user", "Q2"),
    ],
    source=Source("<probe>"),
    system="S",
    tools=[{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
)


class Template:
    """Renders conversations for one tokenizer (it supplies the BOS/EOS text)."""

    name: ClassVar[str] = ""
    default_system: ClassVar[str | None] = None  # used when a conversation carries no system line

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.bos: str = getattr(tokenizer, "bos_token", None) or ""
        self.eos: str = getattr(tokenizer, "eos_token", None) or ""
        if not self.eos:
            raise TunellmError(
                f"template '{self.name}' needs the tokenizer's EOS token, and this tokenizer has none",
                hint="set tokenizer.eos_token before building the template",
            )

    @property
    def stop_strings(self) -> list[str]:
        """Strings that end a generated reply."""
        return [self.eos]

    def render(self, conversation: Conversation, for_generation: bool) -> list[Segment]:
        """The conversation as (text, trainable) segments; their texts joined are the whole prompt.

        Each assistant reply is one trainable segment ending with the end-of-turn text. With
        `for_generation` the conversation must end with a user or tool turn and the last segment
        ends with the assistant prefix the model continues from.
        """
        check_shape(conversation, for_generation)
        return merge(self._render(conversation, for_generation))

    def _render(self, conversation: Conversation, for_generation: bool) -> list[Segment]:
        raise NotImplementedError

    def system_of(self, conversation: Conversation) -> str | None:
        return conversation.system if conversation.system is not None else self.default_system

    def knows_token(self, token: str) -> bool:
        """Whether the tokenizer has `token` as one entry (model-specific markers are written only then)."""
        convert = getattr(self.tokenizer, "convert_tokens_to_ids", None)
        if convert is None:
            return False
        token_id = convert(token)
        return token_id is not None and token_id != getattr(self.tokenizer, "unk_token_id", None)

    def chat_template(self) -> str:
        """A Jinja chat template that renders messages as `render(..., for_generation)` does, for a tokenizer."""
        raise TunellmError(
            f"template '{self.name}' has no Jinja chat template form",
            field="data.template",
            hint="add chat_template() to its module in tunellm/data/templates",
        )

    def fingerprint(self) -> str:
        """Text that changes whenever the rendering changes: part of the tokenization cache key."""
        parts: dict[str, Any] = {"name": self.name, "class": type(self).__qualname__, "stop": self.stop_strings}
        for for_generation in (False, True):
            conversation = PROBE if for_generation else Conversation(PROBE.turns[:4], PROBE.source, "S", PROBE.tools)
            try:
                parts[str(for_generation)] = [list(s) for s in self.render(conversation, for_generation)]
            except TunellmError as error:
                parts[str(for_generation)] = f"error: {error}"
        return json.dumps(parts, ensure_ascii=False)


class TurnTemplate(TurnJinja, Template):
    """A template made of per-turn text pieces, in the manner of LLaMA-Factory's formatters.

    Rendered as: begin, prefix(system), then each turn's block; an assistant turn is preceded by
    `assistant_start` (prompt) and rendered by `response` (trainable), then `separator` opens the
    next turn and `trailing` follows the last reply.
    """

    begin: str = ""  # model-specific marker tokens at the very start (ChatGLM2/3's [gMASK]sop)
    assistant_start: str = ""
    separator: str = ""
    trailing: str = ""

    def prefix(self, system: str) -> str:
        """The text before the first turn: the system line (tools already appended), if any."""
        return system

    def user(self, content: str, round_index: int, system: str) -> str:
        raise NotImplementedError

    def tool(self, turn: Turn, round_index: int, system: str) -> str:
        return self.user(tool_result_text(turn), round_index, system)

    def response(self, turn: Turn) -> str:
        return reply_text(turn) + self.eos

    def _render(self, conversation: Conversation, for_generation: bool) -> list[Segment]:
        system = system_with_tools(self.system_of(conversation), conversation.tools)
        segments: list[Segment] = []
        prompt = self.begin + (self.prefix(system) if system else "")
        round_index = -1
        for turn in conversation.turns:
            if turn.role == "assistant":
                segments.append(Segment(prompt + self.assistant_start, False))
                segments.append(Segment(self.response(turn), True))
                prompt = self.separator
                continue
            # the system reaches a turn only while nothing has been said (llama2 writes it inside [INST])
            first = system if round_index < 0 and not segments else ""
            if turn.role == "user":
                round_index += 1
                prompt += self.user(turn.content, round_index, first)
            else:
                prompt += self.tool(turn, max(round_index, 0), first)
        if for_generation:
            segments.append(Segment(prompt + self.assistant_start, False))
        elif conversation.turns[-1].role != "assistant":
            segments.append(Segment(prompt, False))  # no reply to train on: reported as fully masked
        else:
            segments.append(Segment(self.trailing, False))
        return segments
