"""What a run must remember to continue exactly: step, data position, loss history, best, RNG."""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class TrainState:
    """The position of a run. `batch_in_epoch` counts micro-batches of `epoch` already trained on."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    elapsed: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_step: int | None = None
    best_value: float | None = None
    # Summed token loss and token count since the last logged step, so a log interval cut by a resume stays exact.
    pending_loss: float = 0.0
    pending_tokens: int = 0

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> TrainState:
        return cls(**json.loads(path.read_text(encoding="utf-8")))

    def advance(self, micro_batches: int, per_epoch: int) -> float:
        """Count one optimizer step over `micro_batches`; return the position in epochs, e.g. 1.25."""
        self.global_step += 1
        self.batch_in_epoch += micro_batches
        if self.batch_in_epoch >= per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        return round(self.epoch + self.batch_in_epoch / per_epoch, 4)

    def improves(self, value: float, greater_is_better: bool) -> bool:
        if self.best_value is None:
            return True
        return value > self.best_value if greater_is_better else value < self.best_value


def epoch_order(
    rows: int, batch_size: int, seed: int, epoch: int, rank: int = 0, processes: int = 1
) -> list[list[int]]:
    """One process's micro-batches (row indices) for one epoch, from a permutation seeded by seed + epoch alone.

    So a resumed run finds its place from (epoch, batch_in_epoch) without replaying anything.
    """
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    per_process = math.ceil(rows / processes)
    order += order[: per_process * processes - rows]  # every process gets as many rows: DDP steps in lockstep
    mine = order[rank::processes]
    return [mine[start : start + batch_size] for start in range(0, len(mine), batch_size)]


def capture_rng() -> dict[str, Any]:
    """Every random generator that dropout, sampling or user code may draw from, as plain JSON data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
