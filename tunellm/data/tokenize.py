"""Conversations to token ids and labels, for training and for generation, through one function.

Each rendered segment is encoded on its own with `add_special_tokens=False` and the pieces are
concatenated (plus a BOS id first where the tokenizer adds one itself, see bos.py), so a prompt
encodes to the same ids whether it is followed by a reply (training) or ends the input (generation).
All segments of all conversations go to the Rust tokenizer in large batches (on a worker thread,
overlapping the rendering); truncation and masking then run as array operations over the flat
token array.

Truncation, in this order:
- `max_source_length`: each prompt segment keeps its last N tokens (cut from the left), so the
  assistant prefix that ends a prompt survives.
- `max_target_length`: each reply keeps its first N-1 tokens and its last one (the EOS).
- `cutoff_len`: a training sample keeps its first N tokens (later turns go first; a reply cut
  there loses its EOS, so the model is never taught to stop mid-answer). A generation prompt keeps
  its last N tokens instead.
A training sample left with no trained token is never kept nor dropped silently: it is excluded
from the dataset and listed, with its source, in the report.
"""

from __future__ import annotations

import gc
import itertools
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tunellm.config.schema import DataConfig
from tunellm.data.bos import bos_to_add, prepend_bos
from tunellm.data.record import Conversation, Source
from tunellm.data.sources import SampleSources
from tunellm.data.templates.base import Template

IGNORE_INDEX = -100
LISTED = 20  # truncated samples listed by source in the report (all fully masked ones are listed)
CHUNK = 8192  # texts per call to the Rust tokenizer: bounds the memory of its Encoding objects
CHECKED = 32  # texts encoded both ways to confirm the fast path gives `tokenizer(...)`'s ids


@dataclass(frozen=True)
class TokenizeOptions:
    cutoff_len: int = 1024
    max_source_length: int | None = None
    max_target_length: int | None = None
    train_on_prompt: bool = False
    mask_history: bool = False
    num_workers: int = 2  # tokenizer threads; does not change the result

    @classmethod
    def from_config(cls, data: DataConfig) -> TokenizeOptions:
        return cls(
            cutoff_len=data.cutoff_len,
            max_source_length=data.max_source_length,
            max_target_length=data.max_target_length,
            train_on_prompt=data.train_on_prompt,
            mask_history=data.mask_history,
            num_workers=data.num_workers,
        )

    def result_options(self) -> dict[str, Any]:
        """The options that change the tokenized result (the cache key's part)."""
        options = asdict(self)
        del options["num_workers"]
        return options


@dataclass
class TokenizeReport:
    rows: int = 0
    kept: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    truncated: int = 0
    truncated_sources: list[str] = field(default_factory=list)  # the first LISTED of them
    fully_masked: int = 0
    fully_masked_sources: list[str] = field(default_factory=list)  # all of them; excluded from the data
    from_cache: bool = False
    cache_file: str | None = None
    read_summary: str | None = None  # what reading the files found (skipped records), kept for warm runs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenizeReport:
        return cls(**data)

    def summary(self, listed: int = 10) -> str:
        lines = [
            f"{self.rows:,} rows -> {self.kept:,} samples, {self.tokens:,} tokens ({self.trained_tokens:,} trained); "
            f"{self.truncated:,} truncated, {self.fully_masked:,} fully masked (excluded)"
            + (f"; from cache {self.cache_file}" if self.from_cache else "")
        ]
        if self.fully_masked:
            lines.append("  nothing left to train on (excluded): " + ", ".join(self.fully_masked_sources[:listed]))
            if self.fully_masked > listed:
                lines.append(f"  ... and {self.fully_masked - listed:,} more")
        if self.truncated:
            lines.append("  truncated, e.g.: " + ", ".join(self.truncated_sources[:listed]))
        return "\n".join(lines)


class TokenizedDataset:
    """Samples stored flat: sample i is ids[offsets[i]:offsets[i + 1]], labels alike (int32).

    `sources` says, per sample, which record it came from (number in the read order, file, line).
    """

    def __init__(
        self,
        input_ids: np.ndarray,
        labels: np.ndarray,
        offsets: np.ndarray,
        report: TokenizeReport,
        sources: SampleSources | None = None,
    ) -> None:
        if input_ids.shape != labels.shape or offsets[0] != 0 or offsets[-1] != len(input_ids):
            raise ValueError("input_ids, labels and offsets do not describe the same samples")
        if sources is not None and len(sources) != len(offsets) - 1:
            raise ValueError("sources do not describe the same samples")
        self.input_ids = input_ids
        self.labels = labels
        self.offsets = offsets
        self.report = report
        self.sources = sources if sources is not None else SampleSources.unknown(len(offsets) - 1)
        self.key: str | None = None  # the tokenization cache key, when it came through the cache

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        index %= len(self)
        start, stop = self.offsets[index], self.offsets[index + 1]
        return {"input_ids": self.input_ids[start:stop], "labels": self.labels[start:stop]}

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def encode_conversation(
    conversation: Conversation,
    tokenizer: Any,
    template: Template,
    options: TokenizeOptions | None = None,
    *,
    for_generation: bool = False,
) -> dict[str, np.ndarray]:
    """One conversation's {"input_ids", "labels"}; with for_generation, the prompt to generate from."""
    dataset = tokenize_conversations([conversation], tokenizer, template, options, for_generation=for_generation)
    if not len(dataset):
        return {"input_ids": np.zeros(0, np.int32), "labels": np.zeros(0, np.int32)}
    return dataset[0]


def tokenize_conversations(
    conversations: Iterable[Conversation],
    tokenizer: Any,
    template: Template,
    options: TokenizeOptions | None = None,
    *,
    for_generation: bool = False,
) -> TokenizedDataset:
    """Render, encode, truncate and mask every conversation; generation prompts are never excluded."""
    options = options or TokenizeOptions()
    segments, sources = encode_segments(conversations, tokenizer, template, options.num_workers, for_generation)
    return assemble(segments, sources, options, for_generation)


def encode_segments(
    conversations: Iterable[Conversation],
    tokenizer: Any,
    template: Template,
    num_workers: int = 2,
    for_generation: bool = False,
) -> tuple[Segments, list[Source]]:
    """Render and encode every conversation, before any truncation or masking: `assemble` then applies the
    options, so one encoding serves several (`data stats` measures whole samples and what cutoff_len keeps)."""
    seg_sample: list[int] = []
    seg_trainable: list[bool] = []
    sources: list[Source] = []

    def texts() -> Iterator[str]:
        for number, conversation in enumerate(conversations):
            sources.append(conversation.source)
            for text, trainable in template.render(conversation, for_generation):
                seg_sample.append(number)
                seg_trainable.append(trainable)
                yield text

    with gc_paused():
        flat, seg_len = encode_texts(tokenizer, texts(), num_workers)
    parts = flat, seg_len, np.array(seg_sample, np.int64), np.array(seg_trainable, bool)
    bos = bos_to_add(tokenizer)
    return Segments(*(parts if bos is None else prepend_bos(*parts, bos)), len(sources)), sources


def encode_texts(tokenizer: Any, texts: Iterable[str], num_workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(all ids concatenated as int32, tokens per text), as `tokenizer(text, add_special_tokens=False)` gives.

    Texts are encoded in chunks on a worker thread: the Rust tokenizer releases the GIL, so reading
    and rendering the next chunk (when `texts` is a generator) overlaps encoding this one.
    """
    stream = iter(texts)
    chunks = iter(lambda: list(itertools.islice(stream, CHUNK)), [])
    with tokenizer_threads(num_workers), ThreadPoolExecutor(max_workers=1) as pool:
        first = next(chunks, [])
        backend = fast_backend(tokenizer, first)

        def encode(chunk: list[str]) -> list[list[int]]:
            if backend is None:
                return tokenizer(chunk, add_special_tokens=False)["input_ids"]
            return [encoding.ids for encoding in backend.encode_batch_fast(chunk, add_special_tokens=False)]

        futures = [pool.submit(encode, chunk) for chunk in itertools.chain([first], chunks) if chunk]
        pieces = [ids for future in futures for ids in future.result()]
    lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
    flat = np.fromiter(itertools.chain.from_iterable(pieces), dtype=np.int32, count=int(lengths.sum()))
    return flat, lengths


def fast_backend(tokenizer: Any, texts: list[str]) -> Any | None:
    """The Rust tokenizer, when it encodes the first texts exactly as the tokenizer's own call does.

    That call can add behaviour around the backend (split_special_tokens, or a slow remote-code
    tokenizer with no backend at all); it also resets the backend's truncation and padding.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast") or len(texts) <= CHECKED:
        return None
    expected = tokenizer(texts[:CHECKED], add_special_tokens=False)["input_ids"]
    if backend.truncation is not None or backend.padding is not None:
        return None
    got = [encoding.ids for encoding in backend.encode_batch_fast(texts[:CHECKED], add_special_tokens=False)]
    return backend if got == expected else None


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: reading and rendering allocate millions of small objects,
    which it would otherwise rescan again and again (about 10% of a cold run on Alpaca)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextmanager
def tokenizer_threads(num_workers: int) -> Iterator[None]:
    """Best effort at `num_workers` threads: rayon reads RAYON_NUM_THREADS once, when its pool starts;
    tokenizers reads TOKENIZERS_PARALLELISM on every batch call."""
    os.environ.setdefault("RAYON_NUM_THREADS", str(num_workers))
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    if num_workers == 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved


@dataclass
class Segments:
    """All segments of all samples, flat: their ids, lengths, owning sample and trainability."""

    ids: np.ndarray
    length: np.ndarray
    sample: np.ndarray
    trainable: np.ndarray
    samples: int


def assemble(
    segments: Segments, sources: list[Source], options: TokenizeOptions, for_generation: bool
) -> TokenizedDataset:
    n = segments.samples
    trained = np.repeat(trained_segments(segments, options, for_generation), segments.length)
    sample = np.repeat(segments.sample, segments.length)
    ids = segments.ids
    keep = truncation_mask(segments, options, for_generation)
    if keep is not None:
        ids, trained, sample = ids[keep], trained[keep], sample[keep]
    before = np.bincount(segments.sample, weights=segments.length, minlength=n).astype(np.int64)
    counts = np.bincount(sample, minlength=n)
    trained_count = np.bincount(sample, weights=trained, minlength=n).astype(np.int64)
    dropped = np.zeros(n, bool) if for_generation else trained_count == 0
    truncated = counts < before
    labels = np.where(trained, ids, IGNORE_INDEX).astype(np.int32)
    if dropped.any():
        kept = ~dropped[sample]
        ids, labels = ids[kept], labels[kept]
    offsets = np.concatenate([[0], np.cumsum(counts[~dropped])]).astype(np.int64)
    report = TokenizeReport(
        rows=n,
        kept=int((~dropped).sum()),
        tokens=int(offsets[-1]),
        trained_tokens=int(trained_count[~dropped].sum()),
        truncated=int(truncated.sum()),
        truncated_sources=[str(sources[i]) for i in np.flatnonzero(truncated)[:LISTED]],
        fully_masked=int(dropped.sum()),
        fully_masked_sources=[str(sources[i]) for i in np.flatnonzero(dropped)],
    )
    return TokenizedDataset(ids, labels, offsets, report, SampleSources.build(sources, np.flatnonzero(~dropped)))


def trained_segments(segments: Segments, options: TokenizeOptions, for_generation: bool) -> np.ndarray:
    """Per segment: whether its tokens get labels."""
    if for_generation:  # a prompt has nothing to train; its earlier replies are context
        return np.zeros(len(segments.length), bool)
    trained = segments.trainable & last_reply_only(segments) if options.mask_history else segments.trainable
    return trained | ~segments.trainable if options.train_on_prompt else trained


def truncation_mask(segments: Segments, options: TokenizeOptions, for_generation: bool) -> np.ndarray | None:
    """Per token: whether it survives the three limits; None when no limit cuts anything.

    The token-level work runs only over the samples that some limit cuts (usually a few).
    """
    length, trainable = segments.length, segments.trainable
    over = np.zeros(len(length), bool)
    if options.max_source_length is not None:
        over |= ~trainable & (length > options.max_source_length)
    if options.max_target_length is not None:
        over |= trainable & (length > options.max_target_length)
    cut = np.bincount(segments.sample, weights=length, minlength=segments.samples) > options.cutoff_len
    cut[segments.sample[over]] = True
    if not cut.any():
        return None
    chosen = cut[segments.sample]
    part = Segments(segments.ids[:0], length[chosen], segments.sample[chosen], trainable[chosen], segments.samples)
    keep = np.ones(len(segments.ids), bool)
    keep[np.repeat(chosen, length)] = token_mask(part, options, for_generation)
    return keep


def token_mask(segments: Segments, options: TokenizeOptions, for_generation: bool) -> np.ndarray:
    """Per token of `segments`: kept by max_source_length, max_target_length and cutoff_len."""
    length = segments.length
    token_seg = np.repeat(np.arange(len(length)), length)
    pos = np.arange(len(token_seg)) - np.repeat(np.cumsum(length) - length, length)
    seg_len, trainable = length[token_seg], segments.trainable[token_seg]
    keep = np.ones(len(token_seg), bool)
    if options.max_source_length is not None:
        keep &= trainable | (pos >= seg_len - options.max_source_length)
    if options.max_target_length is not None:
        keep &= ~trainable | (pos < options.max_target_length - 1) | (pos == seg_len - 1)
    sample = segments.sample[token_seg]
    return keep & within_cutoff(sample, keep, segments.samples, options.cutoff_len, from_end=for_generation)


def last_reply_only(segments: Segments) -> np.ndarray:
    """Per segment: whether it is the last trainable segment of its sample (mask_history)."""
    last = np.full(segments.samples, -1)
    trainable_at = np.flatnonzero(segments.trainable)
    np.maximum.at(last, segments.sample[trainable_at], trainable_at)
    flags = np.zeros(len(segments.length), bool)
    flags[last[last >= 0]] = True
    return flags


def within_cutoff(sample: np.ndarray, keep: np.ndarray, n: int, cutoff: int, *, from_end: bool) -> np.ndarray:
    """Per token: whether it is among the first (or last) `cutoff` kept tokens of its sample."""
    kept_sample = sample[keep]
    counts = np.bincount(kept_sample, minlength=n)
    rank = np.zeros(len(sample), np.int64)
    rank[keep] = np.arange(len(kept_sample)) - np.repeat(np.cumsum(counts) - counts, counts)
    if from_end:
        return rank >= counts[sample] - cutoff
    return rank < cutoff
