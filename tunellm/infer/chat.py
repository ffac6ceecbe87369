"""Chat with a model: a multi-turn session, an interactive loop over a text stream, and one-shot replies.

The loop reads lines from any stream (stdin, or a StringIO in tests) and streams each reply as it is
generated. `/reset` forgets the conversation, `/exit` (or end of input) ends the loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TextIO

from tunellm.data.record import Conversation, Source, Turn
from tunellm.data.templates import Template
from tunellm.data.tokenize import TokenizeOptions
from tunellm.infer.generate import SamplingOptions, stream

COMMANDS = {"/reset": "forget the conversation so far", "/exit": "leave (or end of input)", "/help": "list commands"}
SOURCE = Source("<chat>")


class ChatSession:
    """The turns so far; each reply is streamed and, once complete, added to the history."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        template: Template,
        options: SamplingOptions | None = None,
        *,
        system: str | None = None,
        tokenize_options: TokenizeOptions | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.options = options or SamplingOptions()
        self.system = system  # None leaves the template's default system line
        self.tokenize_options = tokenize_options
        self.turns: list[Turn] = []

    @classmethod
    def for_model(cls, loaded: Any) -> ChatSession:
        """A session with a loaded InferenceModel's `generate:` settings, system prompt and data options."""
        config = loaded.config
        return cls(
            loaded.model,
            loaded.tokenizer,
            loaded.template,
            SamplingOptions.from_config(config.generate),
            system=config.generate.system_or(config.data),
            tokenize_options=TokenizeOptions.from_config(config.data),
        )

    def conversation(self, message: str) -> Conversation:
        return Conversation([*self.turns, Turn("user", message)], SOURCE, system=self.system)

    def reply(self, message: str) -> Iterator[str]:
        """Stream the reply to `message`; the exchange joins the history only if the reply completes."""
        conversation = self.conversation(message)
        pieces: list[str] = []
        for piece in stream(
            self.model,
            self.tokenizer,
            self.template,
            conversation,
            self.options,
            tokenize_options=self.tokenize_options,
        ):
            pieces.append(piece)
            yield piece
        self.turns += [Turn("user", message), Turn("assistant", "".join(pieces))]

    def reset(self) -> None:
        self.turns.clear()


def write_reply(session: ChatSession, message: str, out: TextIO) -> str:
    """Stream the reply to `out` as it comes, end it with a newline, and return it."""
    pieces = []
    for piece in session.reply(message):
        pieces.append(piece)
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    return "".join(pieces)


def one_shot(session: ChatSession, prompt: str, out: TextIO) -> str:
    """Answer one prompt (the `--prompt` mode) and return the reply."""
    return write_reply(session, prompt, out)


def _read(lines: TextIO, out: TextIO, interactive: bool, prompt: str) -> str | None:
    """The next line without its newline; None at the end of input."""
    if interactive:
        out.write(prompt)
        out.flush()
    line = lines.readline()
    return None if line == "" else line.rstrip("\r\n")


def chat_loop(session: ChatSession, lines: TextIO, out: TextIO, *, prompt: str = "> ") -> int:
    """Read messages and commands line by line until `/exit` or end of input; return the replies given.

    A prompt marker is shown only when `lines` is a terminal. Ctrl-C during a reply stops that reply.
    """
    interactive = lines.isatty()
    if interactive:
        out.write("Chat: " + ", ".join(COMMANDS) + ". Ctrl-C stops a reply.\n")
    replies = 0
    while (line := _read(lines, out, interactive, prompt)) is not None:
        message = line.strip()
        if not message:
            continue
        if message == "/exit":
            break
        if message == "/reset":
            session.reset()
            out.write("(conversation cleared)\n")
            continue
        if message == "/help" or (message.startswith("/") and " " not in message):
            known = "" if message == "/help" else f"unknown command {message}; "
            out.write(known + "; ".join(f"{name}: {what}" for name, what in COMMANDS.items()) + "\n")
            continue
        try:
            write_reply(session, message, out)
            replies += 1
        except KeyboardInterrupt:
            out.write("\n(reply stopped)\n")
    return replies
