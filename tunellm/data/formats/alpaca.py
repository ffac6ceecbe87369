"""Alpaca: instruction, optional input, output; optional system and [[user, assistant], ...] history.

Stanford Alpaca, its Chinese translations, BELLE, LLaMA-Factory's demos and ChatGLM-Efficient-Tuning's
multi-turn files all use it. The user turn is the instruction, then a newline and the input if any.
"""

from __future__ import annotations

from tunellm.data.formats.base import (
    FORMATS,
    Format,
    ReadOptions,
    Row,
    extra_fields,
    get_optional_str,
    get_str,
    history_turns,
    row_error,
    with_response,
)
from tunellm.data.record import Conversation, Source, Turn


class Alpaca(Format):
    name = "alpaca"
    fields = ("instruction", "input", "output", "system", "history")
    examples = (
        {"instruction": "Identify the odd one out.", "input": "Twitter, Instagram, Telegram", "output": "Telegram"},
        {"instruction": "什么是三原色？", "input": "", "output": "三原色是红、蓝、黄。"},
        {"instruction": "感谢", "input": "", "output": "不客气。", "history": [["1+1等于几", "1+1的答案是2"]]},
    )
    core = frozenset(fields)

    def sniff(self, row: Row) -> bool:
        return "instruction" in row

    def to_record(self, row: Row, source: Source, options: ReadOptions) -> Conversation:
        instruction = get_str(row, "instruction", source)
        query = get_optional_str(row, "input", source)
        prompt = f"{instruction}\n{query}" if query else instruction
        if not prompt.strip():
            raise row_error(source, "is empty", "instruction", "the user's instruction")
        turns = history_turns(row.get("history"), source)
        turns.append(Turn("user", prompt))
        return Conversation(
            turns=with_response(turns, row.get("output"), "output", source, options),
            source=source,
            system=get_optional_str(row, "system", source),
            extra=extra_fields(row, self.core),
        )


FORMATS.register(Alpaca.name)(Alpaca())
