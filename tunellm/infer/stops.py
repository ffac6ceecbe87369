"""Where a reply ends: the ids and stop strings generation stops on, cutting the text there, and what a stream
holds back while a stop string may still be forming.

`find_stops` is the one place that gathers them; generation, merge (generation_config.json), the server, vLLM
and the doctor's end-of-turn check all call it, so they agree on where a reply ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tunellm.data.templates import Template

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Stops:
    eos_ids: frozenset[int]  # ids that end a reply: the model's EOS ids and one-token stop strings
    texts: tuple[str, ...]  # every stop string; the reply text is cut at the first one found
    watched: tuple[str, ...]  # stop strings of several tokens, which generation checks as text


def ids_of(value: Any) -> set[int]:
    """An `eos_token_id` setting (None, one id or a list) as a set."""
    if value is None:
        return set()
    return {int(value)} if isinstance(value, int) else {int(v) for v in value}


def find_stops(model: Any, tokenizer: Any, template: Template, extra: Sequence[str] = ()) -> Stops:
    """The model's generation-config EOS ids, the tokenizer's EOS, and the template's (and `extra`) stop strings:
    those of one token join the ids, the others are watched as text. `model` needs only `generation_config`."""
    ids = ids_of(getattr(model.generation_config, "eos_token_id", None)) | ids_of(tokenizer.eos_token_id)
    texts = tuple(dict.fromkeys(s for s in (*template.stop_strings, *extra) if s))
    watched = []
    for text in texts:
        pieces = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(pieces) == 1:
            ids.add(pieces[0])
        elif pieces:
            watched.append(text)
    return Stops(frozenset(ids), texts, tuple(watched))


def with_stops(stops: Stops, extra: Sequence[str]) -> Stops:
    """`stops` plus a request's own stop strings (checked as text, like the template's multi-token ones)."""
    added = tuple(dict.fromkeys(s for s in extra if s and s not in stops.texts))
    return Stops(stops.eos_ids, stops.texts + added, stops.watched + added)


def pad_id_of(tokenizer: Any, stops: Stops) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return min(stops.eos_ids) if stops.eos_ids else 0  # padded positions are masked, any id works


def decode(tokenizer: Any, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """The text before the earliest stop string, and whether one was found."""
    found = [at for at in (text.find(s) for s in stops) if at >= 0]
    return (text[: min(found)], True) if found else (text, False)


def finish_text(tokenizer: Any, ids: Sequence[int], stops: Stops, pad_id: int) -> tuple[str, FinishReason, int]:
    """(reply text, finish reason, tokens generated) for one row's new ids."""
    ids = list(ids)
    end = next((i for i, token in enumerate(ids) if token in stops.eos_ids), None)
    if end is not None:
        text, _ = cut_at_stop(decode(tokenizer, ids[:end]), stops.texts)
        return text, "stop", end + 1
    text, stopped = cut_at_stop(decode(tokenizer, ids), stops.texts)
    if not stopped:  # cut at max_new_tokens, possibly inside a multi-byte character
        return text.rstrip("\ufffd"), "length", len(ids)
    while ids and ids[-1] == pad_id:  # a row that stopped early is padded to the batch's length
        ids.pop()
    return text, "stop", len(ids)


class TextStop:
    """A stopping criterion: per row, whether a multi-token stop string appears in the newly generated text.

    Only the last few tokens are decoded each step: a stop string is caught on the step it completes.
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str], prompt_length: int) -> None:
        self.tokenizer = tokenizer
        self.stops = list(stops)
        self.prompt_length = prompt_length
        self.window = max(len(s.encode()) for s in stops) + 4  # a token is at least one byte of text

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        new = input_ids[:, self.prompt_length :][:, -self.window :].tolist()
        done = [any(s in decode(self.tokenizer, row) for s in self.stops) for row in new]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class TextPieces:
    """The text of a growing reply, handed out in pieces that are safe to show.

    Text that might be the start of a stop string (or half a UTF-8 character) is held back until it is
    known not to be one; `finished` is set once an EOS id or a stop string ends the reply.
    """

    def __init__(self, tokenizer: Any, stops: Stops) -> None:
        self.tokenizer = tokenizer
        self.stops = stops
        self.ids: list[int] = []
        self.sent = 0
        self.finished = False

    def feed(self, new_ids: Sequence[int]) -> str:
        """The new text that can be shown after `new_ids` (maybe empty)."""
        self.ids += new_ids
        end = next((i for i, token in enumerate(self.ids) if token in self.stops.eos_ids), None)
        text, stopped = cut_at_stop(decode(self.tokenizer, self.ids[:end]), self.stops.texts)
        if end is not None or stopped:
            self.finished = True
            return self._take(text, len(text))
        return self._take(text, len(text) - held_back(text, self.stops.texts))

    def flush(self) -> str:
        """The rest of the text, once no more ids will come."""
        text, _ = cut_at_stop(decode(self.tokenizer, self.ids), self.stops.texts)
        return self._take(text, len(text))

    def _take(self, text: str, safe: int) -> str:
        if safe <= self.sent:
            return ""
        piece, self.sent = text[self.sent : safe], safe
        return piece


def held_back(text: str, stops: Sequence[str]) -> int:
    """Characters at the end of `text` to hold back: an unfinished UTF-8 character, or a stop string's start."""
    if text.endswith("\ufffd"):
        return len(text) - len(text.rstrip("\ufffd"))
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest
