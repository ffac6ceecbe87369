"""What a data format plug-in provides, the options records are read with, and shared field checks.

A format turns one parsed row (a dict) into a Conversation. Its `fields` are its canonical field
names: `ReadOptions.columns` maps them to a file's own names, and the reader renames a row's fields
before sniffing and converting it, so every format supports column mapping the same way. Fields a
format does not use are kept in `Conversation.extra` (labels, ids, answer choices for scoring).
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from tunellm.data.record import Conversation, Source, ToolCall, Turn
from tunellm.errors import DataError
from tunellm.registry import Registry

if TYPE_CHECKING:
    from tunellm.config.schema import DataConfig

Row = dict[str, Any]


@dataclass
class ReadOptions:
    """How rows become conversations; the same for every format."""

    columns: dict[str, str] = field(default_factory=dict)  # canonical field name -> this file's field name
    placeholders: dict[str, str] = field(default_factory=dict)  # fills {{key}} in any turn or system text
    require_response: bool = True  # False for prediction inputs: an empty reply ends the record at the prompt
    system: str | None = None  # for records that carry no system text
    text_unit: Literal["line", "file"] = "line"  # plain .txt files: one record per non-blank line, or per file

    @classmethod
    def from_config(cls, data: DataConfig, require_response: bool = True) -> ReadOptions:
        return cls(
            columns=dict(data.columns),
            placeholders=dict(data.placeholders),
            require_response=require_response,
            system=data.system,
            text_unit=data.text_unit,
        )


class Format(ABC):
    """One data layout. Register an instance in FORMATS; auto-detection tries formats in registry order."""

    name: ClassVar[str]
    fields: ClassVar[tuple[str, ...]]  # canonical field names: the keys `columns` may map
    examples: ClassVar[tuple[Row, ...]]  # good rows, used by the docs and the contract tests
    plain_text: ClassVar[bool] = False  # raw text for continued pretraining: no default system line

    @abstractmethod
    def sniff(self, row: Row) -> bool:
        """Whether the row looks like this format: a cheap look at its keys, not a validation."""

    @abstractmethod
    def to_record(self, row: Row, source: Source, options: ReadOptions) -> Conversation:
        """The row as a Conversation; raises DataError naming the field and what was expected."""


FORMATS = Registry[Format]("data format")


def rename_columns(row: Row, columns: dict[str, str]) -> Row:
    """The row with mapped fields under their canonical names; a mapped field replaces a same-named one,
    and a mapping whose field this row lacks changes nothing."""
    present = {ours: theirs for ours, theirs in columns.items() if theirs in row and theirs != ours}
    if not present:
        return row
    moved = set(present.values())
    renamed = {key: value for key, value in row.items() if key not in moved and key not in present}
    for ours, theirs in present.items():
        renamed[ours] = row[theirs]
    return renamed


def finish_record(fmt: Format, record: Conversation, options: ReadOptions) -> Conversation:
    """Apply the options every format shares: the default system text and {{key}} placeholders."""
    if record.system is None and options.system and not fmt.plain_text:
        record.system = options.system
    if options.placeholders:
        values = options.placeholders
        if record.system:
            record.system = fill_placeholders(record.system, values)
        for turn in record.turns:
            turn.content = fill_placeholders(turn.content, values)
    return record


_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def fill_placeholders(text: str, values: dict[str, str]) -> str:
    """Replace `{{key}}` by its value; a key without a value is left as written."""
    if "{{" not in text:
        return text
    return _PLACEHOLDER.sub(lambda match: values.get(match.group(1), match.group(0)), text)


def row_error(
    source: Source, message: str, field: str | None = None, expected: str | None = None, hint: str | None = None
) -> DataError:
    return DataError(
        message, file=source.file, line=source.line, index=source.index, field=field, expected=expected, hint=hint
    )


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def get_str(row: Row, key: str, source: Source, expected: str = "a string") -> str:
    """The field's string value; it must be there."""
    value = row.get(key)
    if value is None:
        if key in row:
            raise row_error(source, "is null", key, expected)
        raise row_error(source, "missing", key, expected, hint=_missing_hint(row, key))
    if not isinstance(value, str):
        raise row_error(source, f"is {type_name(value)}", key, expected)
    return value


def get_optional_str(row: Row, key: str, source: Source) -> str | None:
    """The field's string value, or None when it is absent or null."""
    return None if row.get(key) is None else get_str(row, key, source)


def _missing_hint(row: Row, key: str) -> str:
    fields = ", ".join(row) or "none"
    return f"this record's fields are: {fields}; if yours has another name, map it: columns: {{{key}: <name>}}"


def extra_fields(row: Row, core: frozenset[str]) -> dict[str, Any]:
    """The row's fields the format does not use, kept for scoring and inspection.

    An `extra` object (as `tunellm data convert` writes it) is unpacked, so converted files read back the same.
    """
    kept = {key: value for key, value in row.items() if key not in core and key != "extra"}
    nested = row.get("extra")
    if isinstance(nested, dict):
        return nested | kept
    if nested is not None:
        kept["extra"] = nested
    return kept


def history_turns(value: Any, source: Source, key: str = "history") -> list[Turn]:
    """Earlier rounds given as [[user, assistant], ...], oldest first."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise row_error(source, f"is {type_name(value)}", key, "a list of [user, assistant] pairs")
    turns: list[Turn] = []
    for position, pair in enumerate(value):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(text, str) for text in pair)):
            shape = f"a list of {len(pair)}" if isinstance(pair, list) else type_name(pair)
            raise row_error(source, f"is {shape}", f"{key}[{position}]", "a [user, assistant] pair of strings")
        turns.append(Turn("user", pair[0]))
        turns.append(Turn("assistant", pair[1]))
    return turns


_EMPTY_REPLY_HINT = (
    "fix or remove the record; skip_bad (--skip-bad) skips and lists such records; "
    "only files read as prediction input may leave the reply empty (require_response=False)"
)


def with_response(turns: list[Turn], response: Any, key: str, source: Source, options: ReadOptions) -> list[Turn]:
    """The prompt turns plus the assistant reply. An empty reply is an error for training data and
    means "to be predicted" otherwise: the conversation then ends at the prompt."""
    if response is not None and not isinstance(response, str):
        raise row_error(source, f"is {type_name(response)}", key, "the assistant's reply as a string")
    if response is None or not response.strip():
        if options.require_response:
            message = "missing" if response is None else "empty response in training data"
            raise row_error(source, message, key, "the assistant's reply", hint=_EMPTY_REPLY_HINT)
        return turns
    turns.append(Turn("assistant", response))
    return turns


def check_ending(turns: list[Turn], key: str, source: Source, options: ReadOptions) -> list[Turn]:
    """Message-list formats: training needs a final non-empty assistant turn; prediction drops an empty one."""
    if not turns:
        raise row_error(source, "has no user or assistant messages", key, "at least one message")
    last = turns[-1]
    empty_reply = last.role == "assistant" and not last.content.strip() and not last.tool_calls
    if not options.require_response:
        return turns[:-1] if empty_reply and len(turns) > 1 else turns
    if last.role != "assistant":
        raise row_error(
            source, f"ends with a {last.role} message", key, "a final assistant message", hint=_EMPTY_REPLY_HINT
        )
    if empty_reply:
        raise row_error(source, "empty response in training data", key, "the assistant's reply", hint=_EMPTY_REPLY_HINT)
    return turns


def json_problem(error: json.JSONDecodeError, *, at: str = "column") -> str:
    """The decoder's message with its position, in our words. Its messages that point back to where something
    started end in "at" ("Unterminated string starting at"), which a plain " at column" suffix would double."""
    message = error.msg[:1].lower() + error.msg[1:] if error.msg else "cannot parse"
    where = f"column {error.colno}" if at == "column" else f"character {error.pos}"
    return f"{message.removesuffix(' at')} at {where}"


def parse_tools(value: Any, source: Source, key: str = "tools") -> list[dict[str, Any]] | None:
    """Tool schemas from a list or from JSON text of one, in OpenAI's {type: function, function: schema} form
    (what HF chat templates and `Conversation.to_json` expect)."""
    if value is None or value == "":
        return None
    expected = "a list of function schemas, or JSON text of one"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            problem = json_problem(error, at="character")
            raise row_error(source, f"is not valid JSON: {problem}", key, expected) from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(tool, dict) for tool in value):
        raise row_error(source, f"is {type_name(value)}", key, expected)
    tools = [tool if "function" in tool else {"type": "function", "function": tool} for tool in value]
    return tools or None


def tool_call(name: Any, arguments: Any, source: Source, key: str) -> ToolCall:
    """A call with its arguments as JSON text; arguments given as an object are serialized."""
    if not isinstance(name, str) or not name:
        raise row_error(source, f"name is {type_name(name)}", key, "the function's name as a non-empty string")
    if arguments is None:
        return ToolCall(name, "{}")
    if not isinstance(arguments, str):
        return ToolCall(name, json.dumps(arguments, ensure_ascii=False))
    try:
        json.loads(arguments)
    except json.JSONDecodeError as error:
        raise row_error(source, f"arguments are not valid JSON: {error.msg}", key, "JSON arguments") from None
    return ToolCall(name, arguments)


def pending_call_name(turns: list[Turn]) -> str | None:
    """The function a tool result answers: the n-th call of the last calling assistant turn, for the
    n-th tool turn after it."""
    results = 0
    for turn in reversed(turns):
        if turn.role == "tool":
            results += 1
        elif turn.role == "assistant" and turn.tool_calls:
            return turn.tool_calls[results].name if results < len(turn.tool_calls) else None
        else:
            return None
    return None
