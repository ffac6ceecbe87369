"""ChatGLM: prompt/response with [[user, assistant], ...] history, oldest first.

The predecessors' --prompt_column/--response_column/--history_column are `columns: {prompt: ...,
response: ..., history: ...}`.
"""

from __future__ import annotations

from tunellm.data.formats.base import (
    FORMATS,
    Format,
    ReadOptions,
    Row,
    extra_fields,
    get_str,
    history_turns,
    with_response,
)
from tunellm.data.record import Conversation, Source, Turn


class ChatGLM(Format):
    name = "chatglm"
    fields = ("prompt", "response", "history")
    examples = (
        {"prompt": "类型#裤*版型#宽松", "response": "宽松的阔腿裤，穿上舒适。", "history": []},
        {"prompt": "感谢", "response": "不客气。", "history": [["1+1等于几", "1+1的答案是2"]]},
    )
    core = frozenset(fields)

    def sniff(self, row: Row) -> bool:
        return "prompt" in row

    def to_record(self, row: Row, source: Source, options: ReadOptions) -> Conversation:
        turns = history_turns(row.get("history"), source)
        turns.append(Turn("user", get_str(row, "prompt", source)))
        return Conversation(
            turns=with_response(turns, row.get("response"), "response", source, options),
            source=source,
            extra=extra_fields(row, self.core),
        )


FORMATS.register(ChatGLM.name)(ChatGLM())
