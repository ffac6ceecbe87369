"""A data format: rows {"question": ..., "answer": ..., "topic": ...} as one user turn and its reply.

In the package this file is `tunellm/data/formats/qa.py`, registered by the line
`from tunellm.data.formats import qa` in `tunellm/data/formats/__init__.py` (where its place in the list is its
turn in auto-detection), with good rows and planted faults in `tests/fixtures/data/qa/`.
"""

from __future__ import annotations

from tunellm.data.formats.base import FORMATS, Format, ReadOptions, Row, extra_fields, get_str, with_response
from tunellm.data.record import Conversation, Source, Turn


class QA(Format):
    name = "qa"
    fields = ("question", "answer")  # canonical names: data.columns maps a file's own names onto them
    examples = (
        {"question": "What is the capital of France?", "answer": "Paris", "topic": "geography"},
        {"question": "一加一等于几？", "answer": "二"},
    )
    core = frozenset(fields)

    def sniff(self, row: Row) -> bool:
        """A cheap look at the keys; auto-detection asks the registered formats in order."""
        return "question" in row and "answer" in row

    def to_record(self, row: Row, source: Source, options: ReadOptions) -> Conversation:
        """The row as a conversation; a bad field raises a DataError naming the file, line and field."""
        turns = [Turn("user", get_str(row, "question", source))]
        return Conversation(
            turns=with_response(turns, row.get("answer"), "answer", source, options),
            source=source,
            extra=extra_fields(row, self.core),  # unused fields (topic) stay available to scoring
        )


FORMATS.register(QA.name)(QA())
