"""The NaN guard: an optimizer step whose loss or gradient is not finite is skipped, its rows named, and a run
that keeps producing them is stopped with its last good state saved.

A skipped step changes nothing: no parameter, no optimizer moment, no scheduler step (so `global_step` does not
advance), while the data position moves past the bad rows. Under fp16 the GradScaler already skips steps whose
scaled gradients overflowed (that is how it finds its scale, not an error), so there only a non-finite loss counts.
After `train.max_bad_steps` bad steps in a row, `fit` saves a checkpoint of the last good state and raises
TrainingError.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from tunellm.errors import TrainingError

log = logging.getLogger(__name__)
LISTED = 20  # rows named per bad step


def step_is_finite(strategy: Any, loss_sum: torch.Tensor, grad_norm: torch.Tensor | None) -> bool:
    """Whether the summed loss (reduced over processes, so all agree) and, without a scaler, the gradient norm
    are finite."""
    values = [loss_sum.detach().float().reshape(1)]
    if strategy.scaler is None and grad_norm is not None:
        values.append(torch.as_tensor(grad_norm, dtype=torch.float32, device=loss_sum.device).reshape(1))
    return bool(torch.isfinite(torch.cat(values)).all())


def skip_step(strategy: Any, model: Any, optimizer: Any) -> None:
    """Drop the gradients of a bad step; a GradScaler that unscaled them is told to move on (and lower its scale)."""
    strategy.skip(model, optimizer)


def row_source(dataset: Any, index: int) -> str:
    """Where row `index` of `dataset` (a tokenized set, or a Subset of one) came from: file:line, else its index."""
    while hasattr(dataset, "dataset") and hasattr(dataset, "indices"):
        dataset, index = dataset.dataset, int(dataset.indices[index])
    sources = getattr(dataset, "sources", None)
    if sources is None or sources.files == ["<unknown>"]:
        return f"row {index}"
    return str(sources.source(index))


class BadStepGuard:
    """Counts consecutive bad steps; logs each with the sources of its rows."""

    def __init__(self, max_bad_steps: int) -> None:
        self.max_bad_steps = max_bad_steps
        self.consecutive = 0
        self.total = 0

    def good(self) -> None:
        self.consecutive = 0

    def bad(self, step: int, dataset: Any, rows: Sequence[Sequence[int]], rank: int = 0) -> bool:
        """Record a skipped step after `step`; True when the run must stop."""
        self.consecutive += 1
        self.total += 1
        flat = [int(i) for micro in rows for i in micro]
        named = ", ".join(row_source(dataset, i) for i in flat[:LISTED])
        more = f" and {len(flat) - LISTED} more" if len(flat) > LISTED else ""
        log.warning(
            "non-finite loss or gradient after step %d: step skipped (%d in a row, at most %d); process %d rows: %s%s",
            step,
            self.consecutive,
            self.max_bad_steps,
            rank,
            named,
            more,
        )
        return self.consecutive >= self.max_bad_steps

    def stop_error(self, step: int, checkpoint: Any) -> TrainingError:
        return TrainingError(
            f"{self.consecutive} optimizer steps in a row had a non-finite loss or gradient; training stopped",
            file=str(checkpoint),
            field="train.max_bad_steps",
            hint=f"the last good state (step {step}) is saved there. The log names the rows of each skipped step: "
            "check them, or lower the learning rate, use bf16 rather than fp16, or set max_grad_norm",
        )


def skip_batches(state: Any, micro_batches: int, per_epoch: int) -> None:
    """Move the data position past a skipped step's micro-batches without counting an optimizer step."""
    state.batch_in_epoch += micro_batches
    if state.batch_in_epoch >= per_epoch:
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
