"""A chat template renders a conversation as text segments, each marked trainable or not.

The same `render` serves training (every assistant reply is a trainable segment that ends with the
end-of-turn / EOS text) and generation (the conversation ends with a user or tool turn and the
output ends with the assistant prefix), so the two cannot drift apart.

Tool use, in every template that has no markup of its own for it, follows the Qwen2.5 / Hermes
text convention: tool schemas listed in the system part inside <tools></tools>, each tool call
written as <tool_call>{"name": ..., "arguments": ...}</tool_call> after the reply text, and each
tool result wrapped in <tool_response></tool_response> and shown where a user turn would be.

`chat_template()` gives the same rendering as a Jinja chat template (for a merged model's tokenizer):
`TurnTemplate` builds it from its pieces, substituting Jinja variables for the content and system text;
a template whose piece does more than substitute them (round numbers, stripping) overrides `jinja_<piece>`.
Tool schemas and assistant tool calls are not exported: the Jinja template raises an error on them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
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


CONTENT_MARK, SYSTEM_MARK = "\x00content\x00", "\x00system\x00"  # stand-ins for Jinja variables


class Jinja(str):
    """A Jinja expression among the parts given to `jinja_print` (plain strings there are literal text)."""


def jinja_expression(*parts: str) -> str:
    """The parts joined as one Jinja expression: plain strings as literals, `Jinja` parts as they are."""
    terms = [part if isinstance(part, Jinja) else json.dumps(part, ensure_ascii=False) for part in parts if part]
    return " + ".join(terms) or '""'


def jinja_print(*parts: str) -> str:
    """A Jinja statement printing the parts joined; empty when there is nothing to print."""
    return "{{- " + jinja_expression(*parts) + " -}}" if any(parts) else ""


def jinja_from_text(text: str) -> str:
    """The Jinja expression for text holding CONTENT_MARK and SYSTEM_MARK (the variables content and system)."""
    names = {CONTENT_MARK: "content", SYSTEM_MARK: "system"}
    pieces = re.split(f"({CONTENT_MARK}|{SYSTEM_MARK})", text)
    return jinja_expression(*(Jinja(names[piece]) if piece in names else piece for piece in pieces))


def jinja_error(message: str) -> str:
    return "{{- raise_exception(" + json.dumps(message) + ") -}}"


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

    def chat_template(self) -> str:
        """The Jinja form of `_render`: messages (system first, if any; user, assistant and tool results) as
        HF's apply_chat_template passes them, with add_generation_prompt. Raises in Jinja on tools and tool calls.
        """
        no_tools = "template '" + self.name + "' exported by tunellm does not render tool schemas or tool calls"
        default = "none" if self.default_system is None else json.dumps(self.default_system, ensure_ascii=False)
        start = jinja_print(self.assistant_start)
        separator = "{%- if ns.last == 'assistant' -%}" + jinja_print(self.separator) + "{%- endif -%}"
        separator = separator if self.separator else ""
        return "".join(
            [
                "{%- if tools -%}" + jinja_error(no_tools) + "{%- endif -%}",
                "{%- set ns = namespace(system=" + default + ", first=true, round=-1, last=none) -%}",
                "{%- set turns = messages -%}",
                "{%- if messages and messages[0]['role'] == 'system' -%}",
                "{%- set ns.system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}{%- endif -%}",
                jinja_print(self.leading_bos(), self.begin),
                "{%- if ns.system -%}{%- set system = ns.system -%}" + self.jinja_prefix() + "{%- endif -%}",
                "{%- for message in turns -%}{%- set content = message['content'] -%}",
                separator,
                "{%- if message['role'] == 'assistant' -%}",
                "{%- if message.tool_calls -%}" + jinja_error(no_tools) + "{%- endif -%}",
                start + self.jinja_response(),
                "{%- else -%}{%- set system = (ns.system or '') if ns.first else '' -%}",
                "{%- if message['role'] == 'user' -%}{%- set ns.round = ns.round + 1 -%}{%- set round = ns.round -%}",
                self.jinja_user(),
                "{%- elif message['role'] == 'tool' -%}{%- set round = [ns.round, 0] | max -%}" + self.jinja_tool(),
                "{%- else -%}" + jinja_error("unexpected message role here") + "{%- endif -%}{%- endif -%}",
                "{%- if message['role'] != 'tool' -%}{%- set ns.first = false -%}{%- endif -%}",
                "{%- set ns.last = message['role'] -%}{%- endfor -%}",
                "{%- if add_generation_prompt -%}",
                separator + start,
                "{%- elif ns.last == 'assistant' -%}" + jinja_print(self.trailing) + "{%- endif -%}",
            ]
        )

    def leading_bos(self) -> str:
        """The BOS text for the exported Jinja template when tokenization puts a BOS id in front (data/bos.py)
        and the rendering does not write one itself; HF's apply_chat_template adds no special tokens."""
        from tunellm.data.bos import bos_to_add

        probe = Conversation([Turn("user", "Q")], Source("<bos probe>"))
        if bos_to_add(self.tokenizer) is None or self.render(probe, True)[0].text.startswith(self.bos):
            return ""
        return self.bos

    def jinja_prefix(self) -> str:
        """Jinja printing `prefix(system)`, with the variable `system`."""
        return self._jinja_of(lambda content, round_index, system: self.prefix(system), "prefix")

    def jinja_user(self) -> str:
        """Jinja printing `user(...)`, with the variables `content`, `round` (0-based) and `system` (the system
        text up to the first user turn, else '')."""
        return self._jinja_of(self.user, "user")

    def jinja_tool(self) -> str:
        """Jinja printing `tool(...)`: by default a user turn holding the wrapped result, as `tool` does."""
        if type(self).tool is TurnTemplate.tool:
            wrapped = jinja_from_text(tool_result_text(Turn("tool", CONTENT_MARK)))
            return "{%- set content = " + wrapped + " -%}" + self.jinja_user()
        return self._jinja_of(
            lambda content, round_index, system: self.tool(Turn("tool", content), round_index, system), "tool"
        )

    def jinja_response(self) -> str:
        """Jinja printing `response(...)` of a reply without tool calls, with the variable `content`."""
        return self._jinja_of(
            lambda content, round_index, system: self.response(Turn("assistant", content)), "response"
        )

    def _jinja_of(self, piece: Callable[[str, int, str], str], name: str) -> str:
        """Jinja for a piece whose text only substitutes the content and system text; refuses one that does more."""
        text = piece(CONTENT_MARK, 0, SYSTEM_MARK)
        if piece(CONTENT_MARK, 1, "") != text.replace(SYSTEM_MARK, ""):
            raise TunellmError(
                f"template '{self.name}': its {name} text depends on more than the message and system text",
                hint=f"override jinja_{name} in {type(self).__module__}",
            )
        return jinja_print(Jinja(jinja_from_text(text)))
