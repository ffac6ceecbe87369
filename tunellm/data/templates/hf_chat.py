"""The tokenizer's own chat template (Jinja), cut into prompt and reply segments.

The template only renders whole conversations, so the boundaries come from rendering prefixes:
for each assistant turn k, `prompt` = messages[:k] with the generation prompt and `full` =
messages[:k+1]. A template is usable only if every rendered text is a prefix of the next one
(prompt of `full`, `full` of the next prompt); templates that rewrite history (e.g. drop earlier
reasoning) fail that check with a clear error. The reply is trained up to and including the
template's end-of-turn text (found once by rendering a probe reply); whitespace after it is prompt.
Templates that know no tools get the tool list in the system message and tool calls as JSON text.
"""

from __future__ import annotations

import json
from typing import Any

from tunellm.data.record import Conversation, Source
from tunellm.data.templates.base import TEMPLATES, Segment, Template
from tunellm.data.templates.tools import reply_text, system_with_tools, tool_call_arguments
from tunellm.errors import DataError, TunellmError

Message = dict[str, Any]
PROBE_REPLY = "PROBE_REPLY_TEXT"


def where(source: Source) -> dict[str, Any]:
    return {"file": source.file, "line": source.line, "index": source.index}


@TEMPLATES.register("hf_chat")
class HfChat(Template):
    name = "hf_chat"

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        if not getattr(tokenizer, "chat_template", None):
            raise TunellmError(
                "template 'hf_chat' needs a tokenizer with a chat template, and this one has none",
                field="data.template",
                hint="name a template instead, e.g. template: chatml (or none for plain text)",
            )
        source = json.dumps(tokenizer.chat_template)
        self.native_tools = "tools" in source
        self.native_tool_calls = "tool_calls" in source
        self.end, self.after = self._probe_end()

    @property
    def stop_strings(self) -> list[str]:
        end = self.end.strip()
        return [end, self.eos] if end and end != self.eos else [self.eos]

    def chat_template(self) -> str:
        return self.tokenizer.chat_template

    def fingerprint(self) -> str:
        return super().fingerprint() + json.dumps(self.tokenizer.chat_template, ensure_ascii=False)

    def _probe_end(self) -> tuple[str, str]:
        """(end-of-turn text after a reply, whitespace after that) as this template writes them."""
        probe = Source("<hf_chat probe>")
        messages: list[Message] = [{"role": "user", "content": "PROBE_QUESTION"}]
        prompt = self._text(messages, True, None, probe)
        full = self._text([*messages, {"role": "assistant", "content": PROBE_REPLY}], False, None, probe)
        self._check_prefix(prompt, full, probe, 1)
        reply = full[len(prompt) :]
        at = reply.find(PROBE_REPLY)
        if at < 0:
            raise TunellmError(
                "the tokenizer's chat template does not write an assistant reply as given",
                hint="name a template instead, e.g. template: chatml",
            )
        tail = reply[at + len(PROBE_REPLY) :]
        end = tail.rstrip()
        return end, tail[len(end) :]

    def _render(self, conversation: Conversation, for_generation: bool) -> list[Segment]:
        messages, tools = self._messages(conversation)
        source = conversation.source
        segments: list[Segment] = []
        done = ""  # the text rendered so far; every later render must extend it
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            if k == 0:
                raise DataError(
                    "template 'hf_chat' needs a turn before the first assistant turn",
                    hint="for plain text use template: none",
                    **where(source),
                )
            prompt = self._text(messages[:k], True, tools, source)
            full = self._text(messages[: k + 1], False, tools, source)
            self._check_prefix(done, prompt, source, k)
            self._check_prefix(prompt, full, source, k)
            segments.append(Segment(prompt[len(done) :], False))
            segments += self._split_reply(full[len(prompt) :])
            done = full
        if for_generation or messages[-1]["role"] != "assistant":
            text = self._text(messages, for_generation, tools, source)
            self._check_prefix(done, text, source, len(messages))
            segments.append(Segment(text[len(done) :], False))
        return segments

    def _split_reply(self, reply: str) -> list[Segment]:
        if not self.end:  # the template closes a turn with no marker: add EOS so the model learns to stop
            body = reply.rstrip()
            return [Segment(body + self.eos, True), Segment(reply[len(body) :], False)]
        if self.after and reply.endswith(self.end + self.after):
            body = reply[: len(reply) - len(self.after)]
        else:
            body = reply.rstrip()
        return [Segment(body, True), Segment(reply[len(body) :], False)]

    def _messages(self, conversation: Conversation) -> tuple[list[Message], list[dict[str, Any]] | None]:
        system, tools = self.system_of(conversation), conversation.tools
        if tools and not self.native_tools:
            system, tools = system_with_tools(system, tools), None
        messages: list[Message] = [] if system is None else [{"role": "system", "content": system}]
        for turn in conversation.turns:
            message: Message = {"role": turn.role, "content": turn.content}
            if turn.tool_calls and self.native_tool_calls:
                message["tool_calls"] = [
                    {"type": "function", "function": {"name": c.name, "arguments": tool_call_arguments(c)}}
                    for c in turn.tool_calls
                ]
            elif turn.tool_calls:
                message["content"] = reply_text(turn)
            if turn.name is not None:
                message["name"] = turn.name
            messages.append(message)
        return messages, tools

    def _text(self, messages: list[Message], generation: bool, tools: Any, source: Source) -> str:
        if not messages:
            return ""
        try:
            return self.tokenizer.apply_chat_template(
                messages, tools=tools, tokenize=False, add_generation_prompt=generation
            )
        except Exception as error:  # Jinja templates raise anything (raise_exception, TypeError, ...)
            raise DataError(f"the tokenizer's chat template failed: {error}", **where(source)) from None

    def _check_prefix(self, before: str, after: str, source: Source, turn: int) -> None:
        if not after.startswith(before):
            raise DataError(
                f"the tokenizer's chat template is not prefix-consistent at message {turn}: rendering more "
                "turns changes the text of earlier ones, so prompt and reply cannot be cut apart",
                hint="name a template instead (e.g. template: chatml), or use a tokenizer whose template "
                "renders history unchanged",
                **where(source),
            )
