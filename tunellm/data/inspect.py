"""`tunellm data stats` and `preview`: token lengths, truncation, and what exactly is trained."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunellm.atomic import atomic_open
from tunellm.data.read import ReadResult
from tunellm.data.record import Conversation
from tunellm.data.templates import Template
from tunellm.data.tokenize import IGNORE_INDEX, TokenizeOptions, assemble, encode_segments, tokenize_conversations

PERCENTILES = (25, 50, 75, 90)
UNLIMITED = 1 << 30


def describe(values: np.ndarray) -> dict[str, float]:
    """count/mean/std/min/25%/50%/75%/90%/max, as pandas' describe (plus 90%) prints them."""
    if not len(values):
        return {"count": 0}
    table = {
        "count": int(len(values)),
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1) if len(values) > 1 else 0.0),
    }
    table["min"] = float(values.min())
    for percent in PERCENTILES:
        table[f"{percent}%"] = float(np.percentile(values, percent))
    table["max"] = float(values.max())
    return table


@dataclass
class DataStats:
    formats: dict[str, str]
    rows: int
    bad_rows: int
    bad: list[str]
    prompt_lengths: np.ndarray
    response_lengths: np.ndarray
    truncated: int
    fully_masked: int
    fully_masked_sources: list[str]
    cutoff_len: int

    def to_json(self) -> dict[str, Any]:
        formats = set(self.formats.values())
        return {
            "format": formats.pop() if len(formats) == 1 else "mixed",
            "formats": self.formats,
            "rows": self.rows,
            "bad_rows": self.bad_rows,
            "bad": self.bad,
            "prompt_tokens": describe(self.prompt_lengths),
            "response_tokens": describe(self.response_lengths),
            "total_tokens": describe(self.prompt_lengths + self.response_lengths),
            "truncated": self.truncated,
            "truncation_rate": self.truncated / self.rows if self.rows else 0.0,
            "fully_masked": self.fully_masked,
            "fully_masked_sources": self.fully_masked_sources,
            "cutoff_len": self.cutoff_len,
        }


def compute_stats(read: ReadResult, tokenizer: Any, template: Template, options: TokenizeOptions) -> DataStats:
    """Lengths before truncation (prompt = untrained tokens, response = trained ones), and what `options` cut."""
    conversations = read.conversations
    segments, sources = encode_segments(conversations, tokenizer, template, options.num_workers)  # encoded once
    whole = TokenizeOptions(cutoff_len=UNLIMITED)  # prompt = what default masking leaves untrained
    full = assemble(segments, sources, whole, for_generation=False)
    trained = np.add.reduceat(full.labels != IGNORE_INDEX, full.offsets[:-1]) if len(full) else np.zeros(0, int)
    actual = assemble(segments, sources, options, for_generation=False).report
    return DataStats(
        formats=read.formats,
        rows=len(conversations),
        bad_rows=read.skipped,
        bad=[str(error).split("\n")[0] for error in read.bad],
        prompt_lengths=full.lengths - trained,
        response_lengths=trained.astype(np.int64),
        truncated=actual.truncated,
        fully_masked=actual.fully_masked,
        fully_masked_sources=actual.fully_masked_sources,
        cutoff_len=options.cutoff_len,
    )


def plot_histogram(stats: DataStats, path: Path) -> Path:
    """Histogram of prompt, response and total tokens per sample, with the cutoff marked; written atomically."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), dpi=100)
    axes = figure.subplots()
    total = stats.prompt_lengths + stats.response_lengths
    top = max(int(total.max()) if len(total) else 1, 1)
    bins = np.linspace(0, top, 60)
    for values, label in ((stats.prompt_lengths, "prompt"), (stats.response_lengths, "response"), (total, "total")):
        axes.hist(values, bins=bins, alpha=0.5, label=label)
    if stats.cutoff_len <= top:
        axes.axvline(stats.cutoff_len, color="red", linestyle="--", label=f"cutoff_len {stats.cutoff_len}")
    axes.set_xlabel("tokens per sample")
    axes.set_ylabel("samples")
    axes.set_title(f"{stats.rows:,} samples, {stats.truncated:,} truncated")
    axes.legend()
    with atomic_open(path, "wb") as file:
        figure.savefig(file, format="png")
    return path


def token_runs(
    conversation: Conversation, tokenizer: Any, template: Template, options: TokenizeOptions
) -> list[tuple[str, bool]]:
    """The sample as the model sees it: decoded runs of consecutive tokens, each marked trained or masked."""
    sample = tokenize_conversations([conversation], tokenizer, template, options)
    if not len(sample):
        return []
    ids, labels = sample[0]["input_ids"], sample[0]["labels"]
    runs: list[tuple[str, bool]] = []
    start = 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or (labels[end] != IGNORE_INDEX) != (labels[start] != IGNORE_INDEX):
            text = tokenizer.decode(ids[start:end].tolist(), skip_special_tokens=False)
            runs.append((text, bool(labels[start] != IGNORE_INDEX)))
            start = end
    return runs
