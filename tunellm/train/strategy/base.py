"""The distributed strategy seam: what differs between one process, DDP, FSDP2 and DeepSpeed lives behind it.

`fit` asks a Strategy to wrap the model and build the optimizer (`prepare`), to run one optimizer step's
backward over its micro-batches (`accumulate`), to clip and step (`step`), and to write and read the resume state
and the exported weights (`save_state`/`load_state`, `export`). The process facts (rank, world, device) and the
collectives `fit` needs (`reduce_sum`, `barrier`) live here too, so `fit` has no engine-specific branch.

Every strategy normalises the loss the same way: each micro-batch's summed token loss is divided by the trained
tokens of the whole step over all processes, times the factor by which the engine averages gradients
(`grad_average`), so the gradient equals one big batch's whatever the split over processes and micro-batches.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from tunellm.config.schema import TrainConfig
from tunellm.registry import Registry
from tunellm.train.loss import LossPath, token_loss_sum, trained_tokens

log = logging.getLogger(__name__)
STRATEGIES: Registry[type[Strategy]] = Registry("distributed strategy")
OptimizerFactory = Callable[[Any], Any]


def launched_world() -> tuple[int, int, int]:
    """(rank, local rank, world size) as torchrun, `accelerate launch` and the DeepSpeed launcher set them."""
    env = os.environ
    return int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0")), int(env.get("WORLD_SIZE", "1"))


def init_process_group(timeout_s: float) -> None:
    """Join the launcher's process group (env://): NCCL on CUDA, gloo on the CPU. The group's own timeout is twice
    `train.ddp_timeout`, a backstop behind the hang watchdog, which reports first (`train/watchdog.py`)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(launched_world()[1])
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=2 * timeout_s))


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


class Strategy:
    """One process (the base class); subclasses change what their engine does differently."""

    name = "none"
    scaler: Any = None  # fp16 GradScaler where the strategy keeps one

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.rank, self.local_rank, self.world = launched_world()
        if self.world > 1:
            init_process_group(cfg.ddp_timeout)
        self.device = torch.device(f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu")
        self.dtype = torch.bfloat16 if cfg.bf16 else torch.float16 if cfg.fp16 else None
        if cfg.fp16:
            self.scaler = torch.amp.GradScaler(self.device.type)
        self.progress: Callable[[str], None] = lambda where: None  # the watchdog's progress mark, when one runs

    # process facts and collectives
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            self.progress("barrier")
            dist.barrier()

    def reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        """`value` summed over processes (every process gets the sum)."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        self.progress("reduce")
        total = value.detach().clone().to(self._comm_device())
        dist.all_reduce(total)
        return total.to(value.device)

    def _comm_device(self) -> torch.device:
        return self.device

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the body on the main process first, then on the others (which then find its caches)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    # the model
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision (train.bf16/fp16) around forward and loss; weights stay in their own dtype."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def prepare(self, model: Any, make_optimizer: OptimizerFactory) -> tuple[Any, Any]:
        model = model.to(self.device)
        return model, make_optimizer(model)

    def unwrap(self, model: Any) -> Any:
        """The module methods and peft know (no DDP wrapper)."""
        return getattr(model, "module", model)

    def grad_average(self) -> float:
        """The factor the engine divides summed gradients by (DDP, FSDP and ZeRO average over processes)."""
        return float(self.world)

    def sync_gradients(self, model: Any, last: bool) -> contextlib.AbstractContextManager[Any]:
        """Around the backward of one micro-batch; `last`: the step's last, where gradients are synchronised."""
        return contextlib.nullcontext()

    def backward(self, model: Any, loss: torch.Tensor, last: bool) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def accumulate(
        self, model: Any, batches: list[dict[str, torch.Tensor]], loss: LossPath = "chunked"
    ) -> tuple[torch.Tensor, int]:
        """Backward over one optimizer step's micro-batches; (summed token loss, trained tokens), all processes."""
        counted = torch.tensor(float(sum(trained_tokens(b) for b in batches)), dtype=torch.float64)
        tokens = int(self.reduce_sum(counted.to(self.device)))
        scale = self.grad_average() / max(tokens, 1)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            self.progress(f"micro-batch {i}")
            with self.sync_gradients(model, last):
                with self.autocast():
                    summed = token_loss_sum(model, _to(batch, self.device), loss)[0]
                self.backward(model, summed * scale, last)
            loss_sum += summed.detach()
        return self.reduce_sum(loss_sum), tokens

    def clip(self, model: Any, optimizer: Any, max_norm: float) -> torch.Tensor | None:
        """Clip the trainable gradients to `max_norm` (0: only measure); the norm before clipping."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        trainable = [p for p in model.parameters() if p.requires_grad]
        return torch.nn.utils.clip_grad_norm_(trainable, max_norm if max_norm > 0 else math.inf)

    def step(self, model: Any, optimizer: Any, scheduler: Any) -> torch.Tensor | None:
        """Apply the step; the schedule moves only when the optimizer did (an fp16 overflow skips it). Returns the
        gradient norm where the engine measures it inside its step (DeepSpeed), else None."""
        if self.scaler is None:
            optimizer.step()
            scheduler.step()
        else:
            scale = self.scaler.get_scale()
            self.scaler.step(optimizer)
            self.scaler.update()
            if self.scaler.get_scale() >= scale:  # a lowered scale means the scaler skipped the step
                scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return None

    def skip(self, model: Any, optimizer: Any) -> None:
        """Drop a bad step's gradients (see guard.py); a GradScaler is told to move on."""
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.update()

    # checkpoint I/O: the folder policy (temp folder, rename, pruning) is checkpoint.py's
    def export(self, model: Any, folder: Path, save: Callable[[Any, Path], None]) -> None:
        """Write the trained weights as the method's plain files; every process calls it, the main one writes."""
        if self.is_main:
            save(self.unwrap(model), folder)

    def save_schedule(self, folder: Path, scheduler: Any) -> None:
        """The learning-rate schedule's position, the same on every process: the main one writes it."""
        from tunellm.train import optim_state

        if self.is_main:
            optim_state.write_json(folder / "scheduler.json", scheduler.state_dict())

    def load_schedule(self, folder: Path, scheduler: Any) -> None:
        from tunellm.train import optim_state

        scheduler.load_state_dict(optim_state.read_json(folder / "scheduler.json"))

    def save_state(self, checkpoint: Path, model: Any, optimizer: Any, scheduler: Any) -> None:
        """The resume-only state under `checkpoint/state/`; every process calls it. Here the optimizer state is
        the same on every process, so the main one writes it, pickle-free (`optim_state.py`)."""
        from tunellm.train import optim_state

        if self.is_main:
            folder = checkpoint / optim_state.STATE_DIR
            optim_state.write_optimizer(folder, optimizer.state_dict())
            self.save_schedule(folder, scheduler)
            if self.scaler is not None:
                optim_state.write_json(folder / "scaler.json", self.scaler.state_dict())

    def load_state(
        self, checkpoint: Path, model: Any, optimizer: Any, scheduler: Any, load: Callable[[Any, Path], None]
    ) -> None:
        """Weights (through `load`, from the exported files) and the optimizer, scheduler and scaler state."""
        from tunellm.train import optim_state

        folder = checkpoint / optim_state.STATE_DIR
        load(self.unwrap(model), checkpoint)
        optimizer.load_state_dict(optim_state.read_optimizer(folder))
        self.load_schedule(folder, scheduler)
        if self.scaler is not None and (folder / "scaler.json").is_file():
            self.scaler.load_state_dict(optim_state.read_json(folder / "scaler.json"))

    def close(self) -> None:
        """Leave the process group at the end of the run."""
        import torch.distributed as dist

        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def make_strategy(cfg: TrainConfig) -> Strategy:
    """The strategy `train.distributed` names; `none` launched on several processes runs as `ddp`."""
    name = cfg.distributed
    if name == "none" and launched_world()[2] > 1:
        log.info("train.distributed is none but %d processes were launched: using ddp", launched_world()[2])
        name = "ddp"
    return STRATEGIES.get(name)(cfg)
