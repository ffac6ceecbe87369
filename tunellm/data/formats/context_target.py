"""context/target: one prompt and its answer (transformers_tasks' ChatGLM fine-tuning data)."""

from __future__ import annotations

from tunellm.data.formats.base import FORMATS, Format, ReadOptions, Row, extra_fields, get_str, with_response
from tunellm.data.record import Conversation, Source, Turn


class ContextTarget(Format):
    name = "context_target"
    fields = ("context", "target")
    examples = (
        {"context": "Instruction: 分类。\nInput: 苹果挺甜的，个头也大。\nAnswer: ", "target": '["水果"]'},
        {"context": "Question: 2+2?\nAnswer: ", "target": "4"},
    )
    core = frozenset(fields)

    def sniff(self, row: Row) -> bool:
        return "context" in row

    def to_record(self, row: Row, source: Source, options: ReadOptions) -> Conversation:
        turns = [Turn("user", get_str(row, "context", source))]
        return Conversation(
            turns=with_response(turns, row.get("target"), "target", source, options),
            source=source,
            extra=extra_fields(row, self.core),
        )


FORMATS.register(ContextTarget.name)(ContextTarget())
