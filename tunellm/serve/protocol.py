"""The OpenAI API shapes the server reads and writes (the subset it serves), as pydantic models.

Requests accept fields they do not use (clients such as LangChain send many), but every field read is
typed: a wrong type is a 400 in OpenAI's error shape, not a 500. Messages are read by tunellm's own
`openai` data format, so a request's conversation is the one a training row with the same messages is.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunellm.data.formats.base import ReadOptions
from tunellm.data.formats.openai import OpenAI
from tunellm.data.record import Conversation, Source

REQUEST = Source("<request>")
TOOL_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(self.status)
        if kind is None:
            kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise ApiError(400, "at most 4 stop sequences", param="stop")
        return stops


class ChatRequest(_Request):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None

    def conversation(self, default_system: str | None) -> Conversation:
        """The messages as tunellm's conversation (raises DataError on a malformed message)."""
        row: dict[str, Any] = {"messages": self.messages}
        if self.tools and self.tool_choice != "none":
            row["tools"] = self.tools
        conversation = OpenAI().to_record(row, REQUEST, ReadOptions(require_response=False))
        if conversation.system is None:
            conversation.system = default_system
        return conversation

    def wanted_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Request):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions

    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ApiError(400, "give one prompt per request", param="prompt")
        return self.prompt[0]

    def wanted_tokens(self) -> int | None:
        return self.max_tokens


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def split_tool_calls(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(the reply text, its tool calls in OpenAI's shape) from tunellm's <tool_call>{...}</tool_call> markup;
    markup that does not parse as a call stays in the text."""
    calls: list[dict[str, Any]] = []
    kept = []
    at = 0
    for match in TOOL_CALL.finditer(text):
        try:
            call = json.loads(match.group(1))
            name, arguments = call["name"], call.get("arguments", {})
        except (ValueError, KeyError, TypeError):
            continue
        if not isinstance(name, str):
            continue
        arguments = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        calls.append({"id": new_id("call"), "type": "function", "function": {"name": name, "arguments": arguments}})
        kept.append(text[at : match.start()])
        at = match.end()
    if not calls:
        return text, []
    content = ("".join(kept) + text[at:]).strip()
    return content or None, calls


def chat_response(model: str, text: str, reason: str, used: Usage, tools: bool) -> dict[str, Any]:
    content, calls = split_tool_calls(text) if tools else (text, [])
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
        reason = "tool_calls"
    return {
        "id": new_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": reason, "logprobs": None}],
        "usage": used.model_dump(),
    }


def chat_chunk(
    ident: str, model: str, delta: dict[str, Any], reason: str | None = None, used: Usage | None = None
) -> dict[str, Any]:
    choices = [] if used is not None else [{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}]
    chunk: dict[str, Any] = {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if used is not None:
        chunk["usage"] = used.model_dump()
    return chunk


def completion_body(ident: str, model: str, text: str, reason: str | None, used: Usage | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": ident,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": reason, "logprobs": None}],
    }
    if used is not None:
        body["usage"] = used.model_dump()
    return body


def model_card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "tunellm"}
