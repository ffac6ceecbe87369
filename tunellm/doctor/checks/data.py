"""Data checks: format, rows, bad rows with their locations, fully masked rows, truncation, dev/train overlap."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tunellm.data.record import Conversation
from tunellm.doctor.base import CHECKS, Context, Result

LISTED = 5  # locations shown per finding
TRUNCATION_WARN = 0.05  # share of truncated rows above which a warning is due


def prompt_key(conversation: Conversation) -> tuple[Any, ...]:
    """Everything the model is given before the last reply: system line and turns, the last reply left out."""
    turns = conversation.turns[:-1] if conversation.has_response else conversation.turns
    return (conversation.system, tuple((turn.role, turn.content.strip()) for turn in turns))


def overlap(context: Context, train: list[Conversation]) -> Result:
    """Dev rows whose prompt also appears in train; with dev_split, prompts repeated inside train (a split can
    put the copies on both sides)."""
    data = context.config.data
    if data.dev:
        dev = context.read(data.dev).conversations
        seen = {prompt_key(c) for c in train}
        shared = [c for c in dev if prompt_key(c) in seen]
        if not shared:
            return Result("data.overlap", "pass", f"no dev prompt appears in train ({len(dev):,} dev rows)")
        where = [str(c.source) for c in shared[:LISTED]]
        message = f"{len(shared):,} of {len(dev):,} dev rows have a prompt identical to a training row"
        return Result(
            "data.overlap", "warn", message, details=["e.g. " + ", ".join(where)], data={"shared": len(shared)}
        )
    if data.dev_split > 0:
        counts = Counter(prompt_key(c) for c in train)
        repeated = sum(n for n in counts.values() if n > 1)
        if repeated:
            message = f"{repeated:,} training rows share a prompt with another: dev_split can put copies on both sides"
            return Result("data.overlap", "warn", message, data={"repeated": repeated})
        return Result("data.overlap", "pass", "no repeated prompts, so dev_split cannot leak")
    return Result("data.overlap", "pass", "no dev set")


def format_result(read: Any) -> Result:
    formats = sorted(set(read.formats.values()))
    files = ", ".join(f"{file} ({fmt})" for file, fmt in list(read.formats.items())[:LISTED])
    return Result(
        "data.format", "pass", ", ".join(formats) or "no files", details=[files], data={"formats": read.formats}
    )


def bad_rows_result(read: Any, skip_bad: bool) -> Result:
    if not read.bad:
        return Result("data.bad_rows", "pass", f"no bad rows in {read.total:,}")
    lines = [str(error).split("\n")[0] for error in read.bad[:LISTED]]
    if len(read.bad) > LISTED:
        lines.append(f"... and {len(read.bad) - LISTED:,} more")
    if skip_bad:
        return Result("data.bad_rows", "warn", f"{len(read.bad):,} bad rows will be skipped (skip_bad)", details=lines)
    message = f"{len(read.bad):,} bad rows: training stops at the first (set data.skip_bad=true to skip them)"
    return Result("data.bad_rows", "fail", message, details=lines, data={"bad": len(read.bad)})


@CHECKS.register("data")
def check_data(context: Context) -> list[Result]:
    data = context.config.data
    if not data.train:
        return [Result("data.rows", "fail", "no training data given (--data FILE, or data.train)")]
    read = context.read(data.train)
    results = [format_result(read)]
    rows = len(read.conversations)
    results.append(Result("data.rows", "pass" if rows else "fail", f"{rows:,} rows read of {read.total:,}"))
    results.append(bad_rows_result(read, data.skip_bad))
    if not rows:
        return results
    stats = context.data_stats
    masked = stats.fully_masked
    if masked:
        where = ", ".join(stats.fully_masked_sources[:LISTED])
        message = f"{masked:,} rows have nothing left to train on after truncation (excluded)"
        results.append(Result("data.fully_masked", "warn", message, details=["e.g. " + where]))
    else:
        results.append(Result("data.fully_masked", "pass", "every row keeps trained tokens"))
    rate = stats.truncated / stats.rows
    message = f"{stats.truncated:,} rows ({rate:.1%}) longer than cutoff_len {stats.cutoff_len}"
    longest = int((stats.prompt_lengths + stats.response_lengths).max())
    status = "warn" if rate > TRUNCATION_WARN else "pass"
    results.append(Result("data.truncation", status, message, details=[f"longest row {longest:,} tokens"]))
    results.append(overlap(context, read.conversations))
    return results
