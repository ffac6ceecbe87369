"""Stanford Alpaca's prompt, multi-turn as in LLaMA-Factory's `alpaca` template.

Source: LLaMA-Factory src/llamafactory/data/template.py, `register_template(name="alpaca", ...)`:
user "### Instruction:\\n{content}\\n\\n### Response:\\n", assistant "{content}" + EOS + "\\n\\n", and its
default system line, which (or the record's own) comes first, followed by a blank line. Here the
"\\n\\n" after EOS opens the next turn instead of closing the reply, so it is never trained and a
single-turn sample ends with EOS.
"""

from __future__ import annotations

from tunellm.data.templates.base import TEMPLATES, TurnTemplate


@TEMPLATES.register("alpaca")
class Alpaca(TurnTemplate):
    name = "alpaca"
    default_system = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    )
    assistant_start = "### Response:\n"
    separator = "\n\n"

    @property
    def stop_strings(self) -> list[str]:
        return [self.eos, "### Instruction:"]

    def prefix(self, system: str) -> str:
        return system + "\n\n"

    def user(self, content: str, round_index: int, system: str) -> str:
        return f"### Instruction:\n{content}\n\n"
