"""PromptCBLUE: input/target plus answer_choices, task_type, task_dataset and sample_id.

Everything but input and target is kept in `extra`: scoring needs the choices and the task. Its
test files have an empty target; read them with require_response=False.
"""

from __future__ import annotations

from tunellm.data.formats.base import FORMATS, Format, ReadOptions, Row, extra_fields, get_str, with_response
from tunellm.data.record import Conversation, Source, Turn


class PromptCBLUE(Format):
    name = "promptcblue"
    fields = ("input", "target")
    examples = (
        {
            "input": "判断下面搜索词的意图：\n丰胸的方法有哪些\n选项：病情诊断，治疗方案，非上述类型\n答：",
            "target": "治疗方案",
            "answer_choices": ["病情诊断", "治疗方案", "非上述类型"],
            "task_type": "cls",
            "task_dataset": "KUAKE-QIC",
            "sample_id": "aug-qic-0",
        },
        {
            "input": "根据下面的问诊对话自动生成对应的诊疗报告：\n患者：宝宝便秘怎么办？\n答：",
            "target": "主诉：便秘。",
            "answer_choices": None,
            "task_type": "report_generation",
            "task_dataset": "IMCS-V2-MRG",
            "sample_id": "dev-1",
        },
    )
    core = frozenset(fields)

    def sniff(self, row: Row) -> bool:
        return "input" in row and "target" in row

    def to_record(self, row: Row, source: Source, options: ReadOptions) -> Conversation:
        turns = [Turn("user", get_str(row, "input", source))]
        return Conversation(
            turns=with_response(turns, row.get("target"), "target", source, options),
            source=source,
            extra=extra_fields(row, self.core),
        )


FORMATS.register(PromptCBLUE.name)(PromptCBLUE())
