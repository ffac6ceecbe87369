"""Generation: batched with left padding and a KV cache, or streamed for one conversation.

Prompts are built by `encode_conversation(..., for_generation=True)`, the tokenizer code training
uses, so a prompt is token for token the prompt part of a training sample. Generation stops at any
EOS id and at the template's stop strings (stops.py); the stop string is cut from the text. Greedy output does
not depend on the batch size: rows are left-padded and masked, and transformers derives position
ids from the attention mask, so padding changes neither positions nor attention.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from queue import Queue
from typing import Any

import torch

from tunellm.config.schema import GenerateConfig
from tunellm.data.record import Conversation
from tunellm.data.templates import Template
from tunellm.data.tokenize import TokenizeOptions, tokenize_conversations
from tunellm.errors import ConfigError, DataError
from tunellm.infer.stops import FinishReason, Stops, TextPieces, TextStop, find_stops, finish_text, pad_id_of


@dataclass(frozen=True)
class SamplingOptions:
    """Greedy unless temperature > 0; top_k=0 and top_p=1 switch those cuts off."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()  # stop strings besides the template's

    @classmethod
    def from_config(cls, generate: GenerateConfig, **changes: Any) -> SamplingOptions:
        """The `generate:` section's settings (its system prompt is the caller's), with `changes` on top."""
        values = generate.model_dump(exclude={"system"}) | changes
        return cls(**(values | {"stop": tuple(values.get("stop") or ())}))

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
    stops = find_stops(model, tokenizer, template, options.stop)
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
    stops = find_stops(model, tokenizer, template, options.stop)
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
