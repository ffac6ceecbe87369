"""The batcher handed to `fit`: which rows form each micro-batch of an epoch, and how they become tensors.

Both batchers start from the same permutation, seeded by seed + epoch alone, so a resumed run finds its place from
(epoch, micro-batch in epoch) without replaying anything. `PaddedBatcher` cuts it into `per_device_train_batch_size`
rows padded to the longest; `PackedBatcher` into token-budget micro-batches without padding (`data/pack.py`). The
number of micro-batches of every epoch is known before training starts, so the step count, the progress bar and
the epoch fraction are exact.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from tunellm.config.schema import RunConfig, TrainConfig
from tunellm.data.pack import collate, collate_packed, pack_order
from tunellm.models.families import family_for
from tunellm.train.loss import causal_lm
from tunellm.train.state import epoch_order

log = logging.getLogger(__name__)

# attention kernels whose masks transformers derives from packed position ids when no attention mask is given
PACKING_ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")
DEFAULT_CUTOFF = 1024


class Batcher(Protocol):
    name: str

    def epoch(self, epoch: int) -> list[list[int]]:
        """This process's micro-batches (row indices) of `epoch`."""
        ...

    def collate(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]: ...


class PaddedBatcher:
    name = "padded"

    def __init__(self, rows: int, batch_size: int, seed: int, pad_id: int, rank: int = 0, world: int = 1) -> None:
        self.rows, self.batch_size, self.seed, self.pad_id, self.rank, self.world = (
            rows, batch_size, seed, pad_id, rank, world
        )  # fmt: skip

    @functools.lru_cache(maxsize=2)  # noqa: B019 (a batcher lives as long as its run)
    def epoch(self, epoch: int) -> list[list[int]]:
        return epoch_order(self.rows, self.batch_size, self.seed, epoch, self.rank, self.world)

    def collate(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return collate(rows, self.pad_id)


class PackedBatcher:
    name = "packed"

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        budget: int,
        row_len: int,
        seed: int,
        pad_id: int,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.lengths, self.budget, self.row_len = np.asarray(lengths), budget, row_len
        self.seed, self.pad_id, self.rank, self.world = seed, pad_id, rank, world

    @functools.lru_cache(maxsize=2)  # noqa: B019 (a batcher lives as long as its run)
    def epoch(self, epoch: int) -> list[list[int]]:
        """The epoch's permutation packed in order; micro-batches dealt to processes in turn, the first few
        repeated so that every process gets as many (DDP steps in lockstep)."""
        order = torch.randperm(len(self.lengths), generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        batches = pack_order(self.lengths, order, self.budget)
        batches += batches[: -len(batches) % self.world]
        return batches[self.rank :: self.world]

    def collate(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return collate_packed(rows, self.pad_id, self.row_len)


def packing_blocker(model: Any) -> str | None:
    """Why `model` cannot train on packed batches (None: it can)."""
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return "a prefix (P-Tuning v2) is a key/value cache, and transformers derives no packed mask beside a cache"
    lm = causal_lm(model)
    if not type(lm).__module__.startswith("transformers.models."):
        return f"{type(lm).__name__} is remote code, whose attention may not honour packed position ids"
    model_type = getattr(lm.config, "model_type", None)
    if not family_for(model_type).packs:
        return f"the {model_type} attention is not known to honour packed position ids"
    attention = getattr(lm.config, "_attn_implementation", None)
    if attention not in PACKING_ATTENTION:
        return f"attention kernel {attention} derives no mask from packed position ids"
    return None


def sample_lengths(data: Any) -> np.ndarray:
    """Each sample's tokens; from the tokenized set's offsets when it has them (a Subset of it too)."""
    if isinstance(getattr(data, "lengths", None), np.ndarray):
        return data.lengths
    if isinstance(getattr(getattr(data, "dataset", None), "lengths", None), np.ndarray) and hasattr(data, "indices"):
        return data.dataset.lengths[np.asarray(data.indices, dtype=np.int64)]
    return np.array([len(data[i]["input_ids"]) for i in range(len(data))], dtype=np.int64)


def make_batcher(
    config: RunConfig | TrainConfig, model: Any, data: Any, pad_id: int, rank: int = 0, world: int = 1
) -> Batcher:
    """The batcher `train.batching` asks for; padded, with a logged reason, where the model cannot pack."""
    cfg = config.train if isinstance(config, RunConfig) else config
    padded = PaddedBatcher(len(data), cfg.per_device_train_batch_size, cfg.seed, pad_id, rank, world)
    if cfg.batching == "padded":
        return padded
    blocker = packing_blocker(model)
    if blocker is not None:
        log.warning("batching: padded, not packed: %s", blocker)
        return padded
    cutoff = config.data.cutoff_len if isinstance(config, RunConfig) else DEFAULT_CUTOFF
    budget = cfg.tokens_per_batch or cfg.per_device_train_batch_size * cutoff
    attention = getattr(causal_lm(model).config, "_attn_implementation", "")
    # flash-attention varlen reads the boundaries of one row; the others pay for a row's full square, so keep rows
    # about a sample's maximum long
    row_len = budget if attention.startswith("flash_attention") else min(cutoff, budget)
    log.info("batching: packed, %d tokens per micro-batch in rows of about %d", budget, row_len)
    return PackedBatcher(sample_lengths(data), budget, row_len, cfg.seed, pad_id, rank, world)
