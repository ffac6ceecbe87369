"""Plain text for continued pretraining: rows {"text": ...}, or .txt files the reader splits into rows.

A record is one assistant turn holding the text, with no system line.
"""

from __future__ import annotations

from tunellm.data.formats.base import FORMATS, Format, ReadOptions, Row, extra_fields, get_str, row_error
from tunellm.data.record import Conversation, Source, Turn


class Text(Format):
    name = "text"
    fields = ("text",)
    examples = (
        {"text": "The quick brown fox jumps over the lazy dog."},
        {"text": "床前明月光，疑是地上霜。"},
    )
    plain_text = True
    core = frozenset(fields)

    def sniff(self, row: Row) -> bool:
        return isinstance(row.get("text"), str)

    def to_record(self, row: Row, source: Source, options: ReadOptions) -> Conversation:
        text = get_str(row, "text", source)
        if not text.strip():
            raise row_error(source, "is empty", "text", "non-empty text")
        return Conversation(turns=[Turn("assistant", text)], source=source, extra=extra_fields(row, self.core))


FORMATS.register(Text.name)(Text())
