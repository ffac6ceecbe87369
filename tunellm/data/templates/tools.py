"""Tool use as text, for templates that have no markup of their own for it: the Qwen2.5 / Hermes convention.

Tool schemas are listed in the system part inside <tools></tools>, each tool call is written as
<tool_call>{"name": ..., "arguments": ...}</tool_call> after the reply text, and each tool result is wrapped in
<tool_response></tool_response> and shown where a user turn would be.
"""

from __future__ import annotations

import json
from typing import Any

from tunellm.data.record import ToolCall, Turn

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
