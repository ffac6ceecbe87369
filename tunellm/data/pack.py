"""Samples into micro-batches: padded to the longest row, or packed without padding.

A packed micro-batch takes consecutive samples of an epoch's order until a token budget is full, then lays them out
in a few rows (longest first, each into the shortest row so far). Position ids restart at 0 at every sample and
there is no attention mask: transformers then derives a block-diagonal causal mask from the position ids (sdpa,
eager, flex: `masking_utils.find_packed_sequence_indices`; flash-attention varlen on CUDA with one row:
`modeling_flash_attention_utils._is_packed_sequence`), so no sample sees another. The few pad tokens that even out
the rows form a sequence of their own, with no loss.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

IGNORE = -100


def collate(rows: Sequence[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row: pad id in input_ids, -100 in labels, 0 in the attention mask."""
    longest = max(len(row["input_ids"]) for row in rows)
    input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), longest), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        input_ids[i, :n] = torch.as_tensor(row["input_ids"], dtype=torch.long)
        labels[i, :n] = torch.as_tensor(row["labels"], dtype=torch.long)
        mask[i, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def pack_order(lengths: Sequence[int] | np.ndarray, order: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive samples of `order` grouped into micro-batches of at most `budget` tokens (a longer one alone)."""
    batches: list[list[int]] = []
    current: list[int] = []
    used = 0
    for index in order:
        n = int(lengths[index])
        if current and used + n > budget:
            batches.append(current)
            current, used = [], 0
        current.append(index)
        used += n
    if current:
        batches.append(current)
    return batches


def lay_out(lengths: Sequence[int], row_len: int) -> list[list[int]]:
    """Sample positions (into `lengths`) per row: ceil(total / row_len) rows, longest sample first, each into the
    row with the fewest tokens so far; ties by position, so the layout is deterministic."""
    rows = max(1, math.ceil(sum(lengths) / max(row_len, 1)))
    heap = [(0, row) for row in range(rows)]
    members: list[list[int]] = [[] for _ in range(rows)]
    for position in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        used, row = heapq.heappop(heap)
        members[row].append(position)
        heapq.heappush(heap, (used + lengths[position], row))
    return [sorted(row) for row in members if row]


def collate_packed(rows: Sequence[dict[str, Any]], pad_id: int, row_len: int) -> dict[str, torch.Tensor]:
    """Samples concatenated into rows of about `row_len` tokens; `sequence_ids` says which sample (its position
    in `rows`) each token belongs to, -1 for padding. No attention mask: the position ids carry the boundaries."""
    lengths = [len(row["input_ids"]) for row in rows]
    layout = lay_out(lengths, row_len)
    width = max(sum(lengths[i] for i in members) for members in layout)
    shape = (len(layout), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE, dtype=torch.long)
    sequence_ids = torch.full(shape, -1, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    for r, members in enumerate(layout):
        start = 0
        for i in members:
            end = start + lengths[i]
            input_ids[r, start:end] = torch.as_tensor(rows[i]["input_ids"], dtype=torch.long)
            labels[r, start:end] = torch.as_tensor(rows[i]["labels"], dtype=torch.long)
            labels[r, start] = IGNORE  # nothing predicts a sample's first token (the shifted loss would cross over)
            position_ids[r, start:end] = torch.arange(lengths[i])
            sequence_ids[r, start:end] = i
            start = end
        position_ids[r, start:] = torch.arange(width - start)  # the padding: a sequence of its own
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "sequence_ids": sequence_ids}


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens that are not padding."""
    if "sequence_ids" in batch:
        return int((batch["sequence_ids"] >= 0).sum())
    return int(batch["attention_mask"].sum())
