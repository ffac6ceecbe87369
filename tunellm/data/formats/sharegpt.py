"""ShareGPT: `conversations`, a list of {from, value} messages, with optional `system` and `tools`.

`from` is human/user, gpt/assistant, system (first message only), function_call (an assistant turn
calling tools: its value is JSON {"name", "arguments"} or a list of them) or observation (a tool's
result). As LLaMA-Factory allows, messages may use role/content keys and the list may be named
`messages`; `tools` may be a list or JSON text of one.
"""

from __future__ import annotations

import json
from typing import Any

from tunellm.data.formats.base import (
    FORMATS,
    Format,
    ReadOptions,
    Row,
    check_ending,
    extra_fields,
    get_optional_str,
    parse_tools,
    pending_call_name,
    row_error,
    tool_call,
    type_name,
)
from tunellm.data.record import Conversation, Source, ToolCall, Turn

ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "call",
    "observation": "tool",
    "tool": "tool",
}


class ShareGPT(Format):
    name = "sharegpt"
    fields = ("conversations", "system", "tools")
    examples = (
        {
            "conversations": [
                {"from": "human", "value": "What is 2+2?"},
                {"from": "gpt", "value": "4"},
            ],
            "system": "You are a calculator.",
        },
        {
            "conversations": [
                {"from": "human", "value": "Weather in Jinan?"},
                {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Jinan"}}'},
                {"from": "observation", "value": '{"temperature": 20}'},
                {"from": "gpt", "value": "It is 20 degrees in Jinan."},
            ],
            "tools": '[{"name": "get_weather", "parameters": {"type": "object", "properties": {}}}]',
        },
    )
    core = frozenset((*fields, "messages"))

    def sniff(self, row: Row) -> bool:
        if isinstance(row.get("conversations"), list):
            return True
        messages = row.get("messages")
        return isinstance(messages, list) and bool(messages) and isinstance(messages[0], dict) and "from" in messages[0]

    def to_record(self, row: Row, source: Source, options: ReadOptions) -> Conversation:
        key = "messages" if "messages" in row and "conversations" not in row else "conversations"
        messages = row.get(key)
        if not isinstance(messages, list):
            found = "missing" if messages is None else f"is {type_name(messages)}"
            raise row_error(source, found, key, "a list of {from, value} messages")
        system = get_optional_str(row, "system", source)
        turns: list[Turn] = []
        for position, message in enumerate(messages):
            where = f"{key}[{position}]"
            role, text = message_role_and_text(message, source, where)
            if role == "system":
                if turns:
                    raise row_error(source, "is a system message inside the conversation", where, "system first")
                system = text
            elif role == "call":
                turns.append(Turn("assistant", "", tool_calls=parse_calls(text, source, where)))
            elif role == "tool":
                turns.append(Turn("tool", text, name=pending_call_name(turns)))
            else:
                turns.append(Turn(role, text))
        return Conversation(
            turns=check_ending(turns, key, source, options),
            source=source,
            system=system,
            tools=parse_tools(row.get("tools"), source),
            extra=extra_fields(row, self.core),
        )


def message_role_and_text(message: Any, source: Source, where: str) -> tuple[str, str]:
    if not isinstance(message, dict):
        raise row_error(source, f"is {type_name(message)}", where, "a {from, value} message object")
    role_key = "from" if "from" in message or "role" not in message else "role"
    text_key = "value" if "value" in message or "content" not in message else "content"
    found_role = message.get(role_key)
    role = ROLES.get(found_role) if isinstance(found_role, str) else None
    if role is None:
        found = repr(message.get(role_key)) if role_key in message else "missing"
        raise row_error(source, f"is {found}", f"{where}.{role_key}", "one of " + ", ".join(ROLES))
    text = message.get(text_key)
    if not isinstance(text, str):
        raise row_error(source, f"is {type_name(text)}", f"{where}.{text_key}", "the message text as a string")
    return role, text


def parse_calls(text: str, source: Source, where: str) -> list[ToolCall]:
    """A function_call value: JSON {"name", "arguments"}, or a list of them for parallel calls."""
    expected = 'JSON {"name": ..., "arguments": {...}} or a list of them'
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise row_error(source, f"is not valid JSON: {error.msg}", f"{where}.value", expected) from None
    calls = value if isinstance(value, list) else [value]
    if not calls or not all(isinstance(call, dict) for call in calls):
        raise row_error(source, f"is {type_name(value)}", f"{where}.value", expected)
    return [tool_call(call.get("name"), call.get("arguments"), source, f"{where}.value") for call in calls]


FORMATS.register(ShareGPT.name)(ShareGPT())
