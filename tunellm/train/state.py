"""What a run must remember to continue exactly: step, data position, loss history, best, RNG."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunellm.errors import ConfigError

log = logging.getLogger(__name__)


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
    # What the run trains on (`data_key`): a resume with other data would silently walk another order.
    data_key: str = ""
    # Processes that shared each epoch's micro-batches (dealt in turn): `batch_in_epoch` counts one process's.
    processes: int = 1

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


def resume_on(state: TrainState, processes: int) -> None:
    """Carry the data position over to another number of processes: micro-batches are dealt to processes in turn,
    so `batch_in_epoch` per process of N is batch_in_epoch x N of the epoch's whole list."""
    if state.processes == processes:
        return
    whole = state.batch_in_epoch * state.processes
    if whole % processes:
        log.warning(
            "%d micro-batches of epoch %d were trained by %d processes; %d cannot continue at the same place: "
            "going back %d micro-batch(es)",
            whole, state.epoch, state.processes, processes, whole % processes,
        )  # fmt: skip
    log.info("resuming the run of %d processes on %d", state.processes, processes)
    state.batch_in_epoch, state.processes = whole // processes, processes


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


def data_key(dataset: Any) -> str:
    """A fingerprint of the training rows: the tokenization cache key when there is one (a subset adds its
    indices), else a hash of the rows' ids and labels."""
    digest = hashlib.blake2b(digest_size=16)
    key = getattr(dataset, "key", None)
    if key:
        return str(key)
    parent, indices = getattr(dataset, "dataset", None), getattr(dataset, "indices", None)
    if parent is not None and indices is not None:
        digest.update(data_key(parent).encode())
        digest.update(np.asarray(indices, np.int64).tobytes())
        return digest.hexdigest()
    if all(hasattr(dataset, name) for name in ("input_ids", "labels", "offsets")):  # an uncached tokenized set
        for array in (dataset.input_ids, dataset.labels, dataset.offsets):
            digest.update(np.ascontiguousarray(array).tobytes() + b"|")
        return digest.hexdigest()
    for i in range(len(dataset)):
        row = dataset[i]
        for name in ("input_ids", "labels"):
            digest.update(np.asarray(row[name], np.int64).tobytes() + b"|")
    return digest.hexdigest()


def check_resume_data(state: TrainState, key: str, policy: str, folder: Any) -> None:
    """Stop a resume onto other training data, or with policy `restart_epoch` start the epoch's order afresh."""
    if not state.data_key:  # written before data keys were kept
        log.warning("%s does not record its training data; assuming it is unchanged", folder)
    elif state.data_key != key:
        if policy != "restart_epoch":
            raise ConfigError(
                f"the training data changed since {folder} (data key {state.data_key[:12]}, now {key[:12]}): "
                "resuming would continue another data order",
                file=str(folder),
                field="data.train",
                hint="train on the same data, start a new train.output_dir, or pass --force "
                "(train.resume_data_changed=restart_epoch) to continue on the new data from the start of the epoch",
            )
        log.warning("training data changed since %s: continuing on it from the start of epoch %d", folder, state.epoch)
        state.batch_in_epoch = 0
    state.data_key = key
