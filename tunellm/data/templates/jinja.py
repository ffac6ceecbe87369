"""The Jinja chat template form of a `TurnTemplate` (for a merged model's tokenizer), built from its pieces.

`TurnJinja.chat_template` renders messages as `TurnTemplate.render(..., for_generation)` does: each piece's text
is produced with stand-ins for the content and system text, which become Jinja variables; a template whose piece
does more than substitute them (round numbers, stripping) overrides `jinja_<piece>`. Tool schemas and assistant
tool calls are not exported: the Jinja template raises an error on them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from tunellm.data.record import Conversation, Source, Turn
from tunellm.data.templates.tools import tool_result_text
from tunellm.errors import TunellmError

CONTENT_MARK, SYSTEM_MARK = "\x00content\x00", "\x00system\x00"  # stand-ins for Jinja variables


class Jinja(str):
    """A Jinja expression among the parts given to `jinja_print` (plain strings there are literal text)."""


def jinja_expression(*parts: str) -> str:
    """The parts joined as one Jinja expression: plain strings as literals, `Jinja` parts as they are."""
    terms = [part if isinstance(part, Jinja) else json.dumps(part, ensure_ascii=False) for part in parts if part]
    return " + ".join(terms) or '""'


def jinja_print(*parts: str) -> str:
    """A Jinja statement printing the parts joined; empty when there is nothing to print."""
    return "{{- " + jinja_expression(*parts) + " -}}" if any(parts) else ""


def jinja_from_text(text: str) -> str:
    """The Jinja expression for text holding CONTENT_MARK and SYSTEM_MARK (the variables content and system)."""
    names = {CONTENT_MARK: "content", SYSTEM_MARK: "system"}
    pieces = re.split(f"({CONTENT_MARK}|{SYSTEM_MARK})", text)
    return jinja_expression(*(Jinja(names[piece]) if piece in names else piece for piece in pieces))


def jinja_error(message: str) -> str:
    return "{{- raise_exception(" + json.dumps(message) + ") -}}"


class TurnJinja:
    """The Jinja export of `TurnTemplate` (mixed into it); it reads the template's pieces and attributes."""

    name: str
    default_system: str | None
    tokenizer: Any
    bos: str
    begin: str
    assistant_start: str
    separator: str
    trailing: str

    def chat_template(self) -> str:
        """The Jinja form of `_render`: messages (system first, if any; user, assistant and tool results) as
        HF's apply_chat_template passes them, with add_generation_prompt. Raises in Jinja on tools and tool calls.
        """
        no_tools = "template '" + self.name + "' exported by tunellm does not render tool schemas or tool calls"
        default = "none" if self.default_system is None else json.dumps(self.default_system, ensure_ascii=False)
        start = jinja_print(self.assistant_start)
        separator = "{%- if ns.last == 'assistant' -%}" + jinja_print(self.separator) + "{%- endif -%}"
        separator = separator if self.separator else ""
        return "".join(
            [
                "{%- if tools -%}" + jinja_error(no_tools) + "{%- endif -%}",
                "{%- set ns = namespace(system=" + default + ", first=true, round=-1, last=none) -%}",
                "{%- set turns = messages -%}",
                "{%- if messages and messages[0]['role'] == 'system' -%}",
                "{%- set ns.system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}{%- endif -%}",
                jinja_print(self.leading_bos(), self.begin),
                "{%- if ns.system -%}{%- set system = ns.system -%}" + self.jinja_prefix() + "{%- endif -%}",
                "{%- for message in turns -%}{%- set content = message['content'] -%}",
                separator,
                "{%- if message['role'] == 'assistant' -%}",
                "{%- if message.tool_calls -%}" + jinja_error(no_tools) + "{%- endif -%}",
                start + self.jinja_response(),
                "{%- else -%}{%- set system = (ns.system or '') if ns.first else '' -%}",
                "{%- if message['role'] == 'user' -%}{%- set ns.round = ns.round + 1 -%}{%- set round = ns.round -%}",
                self.jinja_user(),
                "{%- elif message['role'] == 'tool' -%}{%- set round = [ns.round, 0] | max -%}" + self.jinja_tool(),
                "{%- else -%}" + jinja_error("unexpected message role here") + "{%- endif -%}{%- endif -%}",
                "{%- if message['role'] != 'tool' -%}{%- set ns.first = false -%}{%- endif -%}",
                "{%- set ns.last = message['role'] -%}{%- endfor -%}",
                "{%- if add_generation_prompt -%}",
                separator + start,
                "{%- elif ns.last == 'assistant' -%}" + jinja_print(self.trailing) + "{%- endif -%}",
            ]
        )

    def leading_bos(self) -> str:
        """The BOS text for the exported Jinja template when tokenization puts a BOS id in front (data/bos.py)
        and the rendering does not write one itself; HF's apply_chat_template adds no special tokens."""
        from tunellm.data.bos import bos_to_add

        probe = Conversation([Turn("user", "Q")], Source("<bos probe>"))
        if bos_to_add(self.tokenizer) is None or self.render(probe, True)[0].text.startswith(self.bos):
            return ""
        return self.bos

    def jinja_prefix(self) -> str:
        """Jinja printing `prefix(system)`, with the variable `system`."""
        return self._jinja_of(lambda content, round_index, system: self.prefix(system), "prefix")

    def jinja_user(self) -> str:
        """Jinja printing `user(...)`, with the variables `content`, `round` (0-based) and `system` (the system
        text up to the first user turn, else '')."""
        return self._jinja_of(self.user, "user")

    def jinja_tool(self) -> str:
        """Jinja printing `tool(...)`: by default a user turn holding the wrapped result, as `tool` does."""
        from tunellm.data.templates.base import TurnTemplate

        if type(self).tool is TurnTemplate.tool:
            wrapped = jinja_from_text(tool_result_text(Turn("tool", CONTENT_MARK)))
            return "{%- set content = " + wrapped + " -%}" + self.jinja_user()
        return self._jinja_of(
            lambda content, round_index, system: self.tool(Turn("tool", content), round_index, system), "tool"
        )

    def jinja_response(self) -> str:
        """Jinja printing `response(...)` of a reply without tool calls, with the variable `content`."""
        return self._jinja_of(
            lambda content, round_index, system: self.response(Turn("assistant", content)), "response"
        )

    def _jinja_of(self, piece: Callable[[str, int, str], str], name: str) -> str:
        """Jinja for a piece whose text only substitutes the content and system text; refuses one that does more."""
        text = piece(CONTENT_MARK, 0, SYSTEM_MARK)
        if piece(CONTENT_MARK, 1, "") != text.replace(SYSTEM_MARK, ""):
            raise TunellmError(
                f"template '{self.name}': its {name} text depends on more than the message and system text",
                hint=f"override jinja_{name} in {type(self).__module__}",
            )
        return jinja_print(Jinja(jinja_from_text(text)))
