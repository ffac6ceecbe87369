"""OpenAI chat messages: `messages` of {role, content, tool_calls, name, tool_call_id}, optional `tools`.

Roles are system (or developer), user, assistant and tool (or the older function). System messages
may only open the conversation. Content may be a string or a list of {type: text, text} parts; an
assistant message that calls tools may have null content. A tool result is named by its
tool_call_id, its `name`, or its position after the calls.
"""

from __future__ import annotations

from typing import Any

from tunellm.data.formats.base import (
    FORMATS,
    Format,
    ReadOptions,
    Row,
    check_ending,
    extra_fields,
    parse_tools,
    pending_call_name,
    row_error,
    tool_call,
    type_name,
)
from tunellm.data.record import Conversation, Source, ToolCall, Turn

ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "function": "tool",
}


class OpenAI(Format):
    name = "openai"
    fields = ("messages", "tools")
    examples = (
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": '{"temperature": 18}'},
                {"role": "assistant", "content": "18 degrees."},
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        },
    )
    core = frozenset(fields)

    def sniff(self, row: Row) -> bool:
        messages = row.get("messages")
        return isinstance(messages, list) and bool(messages) and isinstance(messages[0], dict) and "role" in messages[0]

    def to_record(self, row: Row, source: Source, options: ReadOptions) -> Conversation:
        messages = row.get("messages")
        if not isinstance(messages, list):
            found = "missing" if messages is None else f"is {type_name(messages)}"
            raise row_error(source, found, "messages", "a list of {role, content} messages")
        system: str | None = None
        turns: list[Turn] = []
        names_by_id: dict[str, str] = {}
        for position, message in enumerate(messages):
            where = f"messages[{position}]"
            if not isinstance(message, dict):
                raise row_error(source, f"is {type_name(message)}", where, "a {role, content} message object")
            found_role = message.get("role")
            role = ROLES.get(found_role) if isinstance(found_role, str) else None
            if role is None:
                found = repr(message["role"]) if "role" in message else "missing"
                raise row_error(source, f"is {found}", f"{where}.role", "one of " + ", ".join(ROLES))
            content = message_text(message.get("content"), role, source, f"{where}.content")
            if role == "system":
                if turns:
                    raise row_error(source, "is a system message inside the conversation", where, "system first")
                system = content if system is None else f"{system}\n{content}"
            elif role == "assistant":
                turns.append(Turn("assistant", content, tool_calls=message_calls(message, source, where, names_by_id)))
            elif role == "tool":
                name = message.get("name") or names_by_id.get(message.get("tool_call_id")) or pending_call_name(turns)
                turns.append(Turn("tool", content, name=name))
            else:
                turns.append(Turn("user", content))
        return Conversation(
            turns=check_ending(turns, "messages", source, options),
            source=source,
            system=system,
            tools=parse_tools(row.get("tools"), source),
            extra=extra_fields(row, self.core),
        )


def message_text(value: Any, role: str, source: Source, where: str) -> str:
    if isinstance(value, str):
        return value
    if value is None and role == "assistant":
        return ""  # a message that only calls tools
    if isinstance(value, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str) for part in value
    ):
        return "".join(part["text"] for part in value)
    raise row_error(source, f"is {type_name(value)}", where, "a string or a list of {type: text, text} parts")


def message_calls(message: Row, source: Source, where: str, names_by_id: dict[str, str]) -> list[ToolCall]:
    raw = message.get("tool_calls")
    if raw is None and isinstance(message.get("function_call"), dict):
        raw = [{"function": message["function_call"]}]  # the older single-call form
    if raw is None:
        return []
    expected = "a list of {type: function, function: {name, arguments}}"
    if not isinstance(raw, list):
        raise row_error(source, f"is {type_name(raw)}", f"{where}.tool_calls", expected)
    calls = []
    for position, call in enumerate(raw):
        here = f"{where}.tool_calls[{position}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise row_error(source, f"is {type_name(call)} without a function object", here, expected)
        calls.append(tool_call(function.get("name"), function.get("arguments"), source, here))
        if isinstance(call.get("id"), str):
            names_by_id[call["id"]] = calls[-1].name
    return calls


FORMATS.register(OpenAI.name)(OpenAI())
