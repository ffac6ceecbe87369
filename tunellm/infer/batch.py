"""One batched generation whose rows are separate requests: each row has its own length limit, stop strings,
sampling options and seed, can be cancelled on its own, and hands out its new ids at every step.

This is what a server batches concurrent requests with. Rows are left-padded as in `generate`, so a greedy
row gets the same ids as it would alone. Sampling rows are drawn by a logits processor with one seeded
generator per row (generation itself runs greedy over the processed scores), so a seeded request gives the
same reply whatever else shares its batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tunellm.infer.generate import Generation, SamplingOptions, generation_config, left_pad, model_device
from tunellm.infer.stops import Stops, decode, finish_text, pad_id_of

Emit = Callable[[list[int] | BaseException | None], None]  # new ids; an error; None once the row has ended


@dataclass
class Row:
    prompt: list[int]
    options: SamplingOptions
    stops: Stops  # find_stops(...) for the row's model, plus the request's stop strings
    emit: Emit = lambda item: None  # noqa: E731 - called from the generating thread
    cancelled: threading.Event = field(default_factory=threading.Event)
    ids: list[int] = field(default_factory=list)  # the new ids so far, up to and including the one that ended it
    done: bool = False

    def result(self, tokenizer: Any) -> Generation:
        """The finished row as `generate` reports a reply (same text, finish reason and token count)."""
        text, reason, used = finish_text(tokenizer, self.ids, self.stops, pad_id_of(tokenizer, self.stops))
        return Generation(text, reason, len(self.prompt), used)


class RowFeeder:
    """A stopping criterion that reads each row's new id, hands it to the row, and ends rows one by one:
    at an EOS id, a stop string, the row's own max_new_tokens, or its cancellation."""

    def __init__(self, tokenizer: Any, rows: Sequence[Row], prompt_length: int) -> None:
        self.tokenizer = tokenizer
        self.rows = rows
        self.prompt_length = prompt_length
        self.windows = [max((len(s.encode()) for s in row.stops.watched), default=0) + 4 for row in rows]

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        if input_ids.shape[1] > self.prompt_length:
            newest = input_ids[:, -1].tolist()
            for index, row in enumerate(self.rows):
                if not row.done:
                    self._take(index, row, newest[index])
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)

    def _take(self, index: int, row: Row, token: int) -> None:
        if row.cancelled.is_set():
            self.end(row)
            return
        row.ids.append(token)
        window = row.ids[-self.windows[index] :]
        row.done = (
            token in row.stops.eos_ids
            or len(row.ids) >= row.options.max_new_tokens
            or (bool(row.stops.watched) and any(s in decode(self.tokenizer, window) for s in row.stops.watched))
        )
        row.emit([token])
        if row.done:
            row.emit(None)

    @staticmethod
    def end(row: Row, error: BaseException | None = None) -> None:
        if not row.done:
            row.done = True
            if error is not None:
                row.emit(error)
            row.emit(None)


class RowSampler:
    """A logits processor drawing the next id of each sampling row with the row's own seeded generator
    (temperature, then top-k, then top-p, as transformers orders them); greedy rows are left as they are."""

    def __init__(self, rows: Sequence[Row], device: torch.device) -> None:
        self.rows: list[tuple[int, SamplingOptions, torch.Generator]] = []
        for index, row in enumerate(rows):
            if not row.options.greedy:
                generator = torch.Generator(device=device)
                if row.options.seed is None:
                    generator.seed()
                else:
                    generator.manual_seed(row.options.seed)
                self.rows.append((index, row.options, generator))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for index, options, generator in self.rows:
            logits = scores[index].float() / options.temperature
            if options.top_k and options.top_k < logits.shape[-1]:
                kth = torch.topk(logits, options.top_k).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            if options.top_p < 1:
                ordered, order = logits.sort(descending=True)
                probs = ordered.softmax(-1)
                outside = probs.cumsum(-1) - probs > options.top_p  # keeps at least the likeliest id
                logits[order[outside]] = float("-inf")
            drawn = torch.multinomial(logits.softmax(-1), 1, generator=generator)
            scores[index] = float("-inf")
            scores[index, drawn] = 0.0
        return scores


def generate_rows(model: Any, tokenizer: Any, rows: Sequence[Row], stops: Stops) -> None:
    """Generate every row in one batch; each row's `emit` gets its ids as they come and None at its end.

    `stops` holds the EOS ids shared by the rows (the rows' own stop strings are in each row). An error
    is handed to every unfinished row, then raised.
    """
    from transformers import LogitsProcessorList, StoppingCriteriaList

    pad_id = pad_id_of(tokenizer, stops)
    input_ids, attention_mask = left_pad([row.prompt for row in rows], pad_id, model_device(model))
    longest = SamplingOptions(max_new_tokens=max(row.options.max_new_tokens for row in rows))
    feeder = RowFeeder(tokenizer, rows, input_ids.shape[1])
    try:
        model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=generation_config(model, longest, stops, pad_id),
            stopping_criteria=StoppingCriteriaList([feeder]),
            logits_processor=LogitsProcessorList([RowSampler(rows, input_ids.device)]),
        )
    except BaseException as error:
        for row in rows:
            RowFeeder.end(row, error)
        raise
    for row in rows:  # rows still open here were cancelled on the last step
        RowFeeder.end(row)
