"""A chat template renders a conversation as text segments, each marked trainable or not.

The same `render` serves training (every assistant reply is a trainable segment that ends with the
end-of-turn / EOS text) and generation (the conversation ends with a user or tool turn and the
output ends with the assistant prefix), so the two cannot drift apart.

Tool use, in every template that has no markup of its own for it, follows the Qwen2.5 / Hermes
text convention: tool schemas listed in the system part inside <tools></tools>, each tool call
written as <tool_call>{"name": ..., "arguments": ...}</tool_call> after the reply text, and each
tool result wrapped in <tool_response></tool_response> and shown where a user turn would be.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, NamedTuple

from tunellm.data.record import Conversation, Source, ToolCall, Turn
from tunellm.errors import DataError, TunellmError
from tunellm.registry import Registry


class Segment(NamedTuple):
    text: str
    trainable: bool


TEMPLATES: Registry[type[Template]] = Registry("template")


TOOLS_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}'
    "\n</tool_call>"
)


def tools_text(tools: list[dict[str, Any]]) -> str:
    """The tool schemas as Qwen2.5's chat template lists them in its system message."""
    return TOOLS_HEADER + "".join("\n" + json.dumps(tool, ensure_ascii=False) for tool in tools) + TOOLS_FOOTER


def tool_call_arguments(call: ToolCall) -> Any:
    """The arguments as a JSON value when they parse (templates re-serialize them), else the raw text."""
    try:
        return json.loads(call.arguments)
    except (TypeError, ValueError):
        return call.arguments


def tool_call_text(call: ToolCall) -> str:
    arguments = json.dumps(tool_call_arguments(call), ensure_ascii=False)
    return f'<tool_call>\n{{"name": "{call.name}", "arguments": {arguments}}}\n</tool_call>'


def reply_text(turn: Turn) -> str:
    """An assistant turn's text followed by its tool calls, one per line (as Qwen2.5 writes them)."""
    parts = [turn.content] if turn.content else []
    parts += [tool_call_text(call) for call in turn.tool_calls]
    return "\n".join(parts)


def tool_result_text(turn: Turn) -> str:
    return f"<tool_response>\n{turn.content}\n</tool_response>"


def system_with_tools(system: str | None, tools: list[dict[str, Any]] | None) -> str:
    """The system text with the tool list appended; empty when there is neither."""
    if not tools:
        return system or ""
    return f"{system}\n\n{tools_text(tools)}" if system else tools_text(tools)


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


class TurnTemplate(Template):
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
