"""No template: for continued pretraining and plain continuation.

A prompt is its text as is and a reply is its text followed by EOS; a system line, if any, comes
first on its own line. Plain text read as one assistant turn is thus trained whole, EOS included.
"""

from __future__ import annotations

from tunellm.data.templates.base import TEMPLATES, TurnTemplate


@TEMPLATES.register("none")
class NoTemplate(TurnTemplate):
    name = "none"

    def prefix(self, system: str) -> str:
        return system + "\n"

    def user(self, content: str, round_index: int, system: str) -> str:
        return content
