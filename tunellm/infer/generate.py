"""Generation: batched with left padding and a KV cache, or streamed for one conversation.

Prompts are built by `encode_conversation(..., for_generation=True)`, the tokenizer code training
uses, so a prompt is token for token the prompt part of a training sample. Generation stops at any
EOS id and at the template's stop strings; the stop string is cut from the text. Greedy output does
not depend on the batch size: rows are left-padded and masked, and transformers derives position
ids from the attention mask, so padding changes neither positions nor attention.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from queue import Queue
from typing import Any, Literal

import torch

from tunellm.data.record import Conversation
from tunellm.data.templates import Template
from tunellm.data.tokenize import TokenizeOptions, tokenize_conversations
from tunellm.errors import ConfigError, DataError

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingOptions:
    """Greedy unless temperature > 0; top_k=0 and top_p=1 switch those cuts off."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = {
            "max_new_tokens": (self.max_new_tokens > 0, "an integer > 0"),
            "temperature": (self.temperature >= 0, "a number >= 0 (0 is greedy)"),
            "top_p": (0 < self.top_p <= 1, "a number in (0, 1]"),
            "top_k": (self.top_k >= 0, "an integer >= 0 (0 is off)"),
            "repetition_penalty": (self.repetition_penalty > 0, "a number > 0 (1 is off)"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise ConfigError(f"{name} = {getattr(self, name)!r} is out of range", field=name, expected=expected)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Generation:
    text: str
    finish_reason: FinishReason  # "stop": EOS or a stop string; "length": max_new_tokens reached
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Stops:
    eos_ids: frozenset[int]  # ids that end a reply: the model's EOS ids and one-token stop strings
    texts: tuple[str, ...]  # every stop string; the reply text is cut at the first one found
    watched: tuple[str, ...]  # stop strings of several tokens, which generation checks as text


def find_stops(model: Any, tokenizer: Any, template: Template) -> Stops:
    ids: set[int] = set()
    for source in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        ids.update([source] if isinstance(source, int) else source or [])
    watched = []
    for text in template.stop_strings:
        pieces = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(pieces) == 1:
            ids.add(pieces[0])
        elif pieces:
            watched.append(text)
    return Stops(frozenset(ids), tuple(s for s in template.stop_strings if s), tuple(watched))


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

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        new = input_ids[:, self.prompt_length :][:, -self.window :].tolist()
        done = [any(s in decode(self.tokenizer, row) for s in self.stops) for row in new]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class Cancelled:
    """A stopping criterion that ends every row once `event` is set (a closed stream)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def encode_prompts(
    conversations: Sequence[Conversation], tokenizer: Any, template: Template, options: TokenizeOptions | None
) -> list[list[int]]:
    dataset = tokenize_conversations(conversations, tokenizer, template, options, for_generation=True)
    prompts = [dataset[i]["input_ids"].tolist() for i in range(len(dataset))]
    for conversation, prompt in zip(conversations, prompts, strict=True):
        if not prompt:
            source = conversation.source
            raise DataError("the prompt is empty", file=source.file, line=source.line, index=source.index)
    return prompts


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, longest - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, longest - len(prompt) :] = 1
    return ids.to(device), mask.to(device)


def generation_config(model: Any, options: SamplingOptions, stops: Stops, pad_id: int) -> Any:
    """Every knob set explicitly: values left unset would be filled from the model's own generation_config
    (often do_sample=True with its temperature), and tunellm's defaults are greedy."""
    from transformers import GenerationConfig

    sampling = {"temperature": 1.0, "top_p": 1.0, "top_k": 50}  # the values greedy search does not warn about
    if not options.greedy:
        sampling = {"temperature": options.temperature, "top_p": options.top_p, "top_k": options.top_k}
    return GenerationConfig(
        max_new_tokens=options.max_new_tokens,
        do_sample=not options.greedy,
        num_beams=1,
        repetition_penalty=options.repetition_penalty,
        eos_token_id=sorted(stops.eos_ids) or None,
        pad_token_id=pad_id,
        bos_token_id=getattr(model.generation_config, "bos_token_id", None),
        use_cache=True,
        **sampling,
    )


def model_device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


def _run_generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    options: SamplingOptions,
    stops: Stops,
    extra: Sequence[Any] = (),
    streamer: Any = None,
) -> torch.Tensor:
    """The new ids of every row (prompt columns removed), right-padded with the pad id."""
    from transformers import StoppingCriteriaList

    pad_id = pad_id_of(tokenizer, stops)
    input_ids, attention_mask = left_pad(prompts, pad_id, model_device(model))
    criteria = list(extra)
    if stops.watched:
        criteria.append(TextStop(tokenizer, stops.watched, input_ids.shape[1]))
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        generation_config=generation_config(model, options, stops, pad_id),
        stopping_criteria=StoppingCriteriaList(criteria),
        streamer=streamer,
    )
    return output[:, input_ids.shape[1] :].cpu()


def generate(
    model: Any,
    tokenizer: Any,
    template: Template,
    conversations: Sequence[Conversation],
    options: SamplingOptions | None = None,
    *,
    batch_size: int = 8,
    tokenize_options: TokenizeOptions | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[Generation]:
    """One reply per conversation (each ends with a user or tool turn), in input order.

    Rows are batched by prompt length to waste little on padding; `on_batch(rows_done)` follows progress.
    A seed makes sampling repeatable for the same batch size; greedy output is the same for any batch size.
    """
    options = options or SamplingOptions()
    if not conversations:
        return []
    if batch_size < 1:
        raise ConfigError(f"batch_size = {batch_size} is out of range", field="batch_size", expected="an integer > 0")
    if options.seed is not None:
        torch.manual_seed(options.seed)
    prompts = encode_prompts(conversations, tokenizer, template, tokenize_options)
    stops = find_stops(model, tokenizer, template)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        new = _run_generate(model, tokenizer, [prompts[i] for i in rows], options, stops)
        for row, ids in zip(rows, new.tolist(), strict=True):
            text, reason, used = finish_text(tokenizer, ids, stops, pad_id_of(tokenizer, stops))
            results[row] = Generation(text, reason, len(prompts[row]), used)
        if on_batch is not None:
            on_batch(start + len(rows))
    return [r for r in results if r is not None]


class _IdQueue:
    """A transformers streamer that hands the new ids of a one-row generation to a queue."""

    def __init__(self) -> None:
        self.queue: Queue[list[int] | BaseException | None] = Queue()
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate first puts the prompt
            self.prompt_seen = True
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.queue.put(None)


def stream(
    model: Any,
    tokenizer: Any,
    template: Template,
    conversation: Conversation,
    options: SamplingOptions | None = None,
    *,
    tokenize_options: TokenizeOptions | None = None,
) -> Iterator[str]:
    """The reply to one conversation as text pieces, as they are generated; joined, they equal `generate`'s text.

    Text that might be the start of a stop string is held back until it is known not to be one.
    Closing the iterator early stops generation.
    """
    options = options or SamplingOptions()
    if options.seed is not None:
        torch.manual_seed(options.seed)
    prompt = encode_prompts([conversation], tokenizer, template, tokenize_options)
    stops = find_stops(model, tokenizer, template)
    ids_queue, cancel = _IdQueue(), threading.Event()

    def work() -> None:
        try:
            _run_generate(model, tokenizer, prompt, options, stops, [Cancelled(cancel)], ids_queue)
        except BaseException as error:  # handed to the reading thread, which raises it
            ids_queue.queue.put(error)
            ids_queue.queue.put(None)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        yield from _pieces(tokenizer, ids_queue.queue, stops)
    finally:
        cancel.set()
        thread.join()


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


def _pieces(tokenizer: Any, queue: Queue[list[int] | BaseException | None], stops: Stops) -> Iterator[str]:
    pieces = TextPieces(tokenizer, stops)
    while (item := queue.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        if piece := pieces.feed(item):
            yield piece
        if pieces.finished:
            return
    if piece := pieces.flush():
        yield piece


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
