"""The one internal shape every data format is read into."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Role = Literal["user", "assistant", "tool"]


@dataclass(frozen=True)
class Source:
    """Where a record came from: a file and either its line (JSON Lines, text) or its array index."""

    file: str
    line: int | None = None
    index: int | None = None

    def __str__(self) -> str:
        if self.line is not None:
            return f"{self.file}:{self.line}"
        if self.index is not None:
            return f"{self.file}[{self.index}]"
        return self.file


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text, as the model is trained to write it


@dataclass
class Turn:
    role: Role
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    name: str | None = None  # the tool's name on a tool-result turn


@dataclass
class Conversation:
    """A system line, turns in order, optional tool schemas, where it came from, and fields kept for scoring.

    A conversation for training ends with an assistant turn. One for prediction ends with a user
    (or tool) turn: the reply is what the model is asked to write. Plain text for continued
    pretraining is one assistant turn and nothing else.
    """

    turns: list[Turn]
    source: Source
    system: str | None = None
    tools: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_response(self) -> bool:
        return bool(self.turns) and self.turns[-1].role == "assistant"

    def to_json(self) -> dict[str, Any]:
        """The normalized JSONL form written by `tunellm data convert` (OpenAI-style messages)."""
        messages: list[dict[str, Any]] = []
        if self.system is not None:
            messages.append({"role": "system", "content": self.system})
        for turn in self.turns:
            message: dict[str, Any] = {"role": turn.role, "content": turn.content}
            if turn.tool_calls:
                message["tool_calls"] = [{"type": "function", "function": asdict(call)} for call in turn.tool_calls]
            if turn.name is not None:
                message["name"] = turn.name
            messages.append(message)
        row: dict[str, Any] = {"messages": messages}
        if self.tools:
            row["tools"] = self.tools
        if self.extra:
            row["extra"] = self.extra
        return row
