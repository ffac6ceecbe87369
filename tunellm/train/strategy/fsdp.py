"""`train.distributed: fsdp`: torch's FSDP2 (`fully_shard`), parameters, gradients and optimizer state sharded.

Each decoder layer (the model's `_no_split_modules`) is one FSDP unit, the whole model the root. `zero_stage: 3`
(the default) frees the gathered weights after each layer's forward; `zero_stage: 2` keeps them until the backward
(FSDP's SHARD_GRAD_OP). `offload: all` keeps parameters, gradients and the optimizer step on the CPU.
Micro-batches before a step's last run without the gradient reduce-scatter (`set_requires_gradient_sync`).

The resume state is sharded: every process writes its shards of the trainable weights and optimizer state through
torch.distributed.checkpoint (DCP) into `state/sharded/`, which loads onto any number of processes. The exported
weights are gathered to the main process and written as the method's plain files (a single-file peft adapter).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from tunellm.errors import ConfigError
from tunellm.train.loss import causal_lm
from tunellm.train.strategy.base import STRATEGIES, OptimizerFactory, Strategy

SHARDED_DIR = "sharded"


@contextlib.contextmanager
def state_dict_view(model: Any, state: dict[str, torch.Tensor]) -> Iterator[None]:
    """`model.state_dict()` returns `state` inside the block: peft's and transformers' `save_pretrained` then write
    the gathered full tensors instead of this process's shards."""
    model.state_dict = lambda *args, **kwargs: dict(state)
    try:
        yield
    finally:
        del model.state_dict


def shard_units(model: Any) -> list[torch.nn.Module]:
    """The modules to shard one by one: the decoder layers, by the model's `_no_split_modules` class names."""
    names = set(getattr(causal_lm(model), "_no_split_modules", None) or [])
    return [module for module in model.modules() if type(module).__name__ in names]


def _param_dtype(model: Any, bf16: bool) -> torch.dtype | None:
    """FSDP gathers one dtype per unit: bf16 under train.bf16; else the lowest of mixed dtypes (LoRA's fp32 over a
    bf16 base), None when uniform."""
    if bf16:
        return torch.bfloat16
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    return min(dtypes, key=lambda d: torch.finfo(d).bits) if len(dtypes) > 1 else None


@STRATEGIES.register("fsdp")
class FSDPStrategy(Strategy):
    name = "fsdp"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.dtype = None  # precision is the MixedPrecisionPolicy's: forward in param_dtype, gradients reduced in fp32
        import torch.distributed as dist

        if not dist.is_initialized():  # one process: FSDP still wants a process group, of one
            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)

    def prepare(self, model: Any, make_optimizer: OptimizerFactory) -> tuple[Any, Any]:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        units = shard_units(model)
        if not units:
            raise ConfigError(
                f"{type(causal_lm(model)).__name__} names no decoder layer class (_no_split_modules) to shard",
                field="train.distributed",
                hint="use ddp or deepspeed for this model",
            )
        offload = self.cfg.offload == "all"
        if not offload:
            model = model.to(self.device)
        options = {
            "mesh": init_device_mesh(self.device.type, (self.world,)),
            "reshard_after_forward": (self.cfg.zero_stage or 3) == 3,
            "mp_policy": MixedPrecisionPolicy(
                param_dtype=_param_dtype(model, self.cfg.bf16), reduce_dtype=torch.float32
            ),
            "offload_policy": CPUOffloadPolicy() if offload else OffloadPolicy(),
        }
        for unit in units:
            fully_shard(unit, **options)
        fully_shard(model, **options)
        return model, make_optimizer(model)

    def sync_gradients(self, model: Any, last: bool) -> contextlib.AbstractContextManager[Any]:
        model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def clip(self, model: Any, optimizer: Any, max_norm: float) -> torch.Tensor | None:
        norm = super().clip(model, optimizer, max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # a DTensor over the shards

    def export(self, model: Any, folder: Path, save: Callable[[Any, Path], None]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        self.progress("gather weights")
        full = get_model_state_dict(model, options=options)  # a collective; only the main process receives
        if self.is_main:
            with state_dict_view(model, full):
                save(model, folder)

    def _state(self, model: Any, optimizer: Any) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        weights, moments = get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))
        return {"model": weights, "optimizer": moments}

    def save_state(self, checkpoint: Path, model: Any, optimizer: Any, scheduler: Any) -> None:
        import torch.distributed.checkpoint as dcp

        from tunellm.train import optim_state

        folder = checkpoint / optim_state.STATE_DIR
        self.progress("save sharded state")
        dcp.save(self._state(model, optimizer), checkpoint_id=str(folder / SHARDED_DIR))
        self.save_schedule(folder, scheduler)

    def load_state(
        self, checkpoint: Path, model: Any, optimizer: Any, scheduler: Any, load: Callable[[Any, Path], None]
    ) -> None:
        """Weights and optimizer state from the sharded files (the exported weights are not read)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        from tunellm.train import optim_state

        folder = checkpoint / optim_state.STATE_DIR
        state = self._state(model, optimizer)
        self.progress("load sharded state")
        dcp.load(state, checkpoint_id=str(folder / SHARDED_DIR))  # reshards onto this run's processes
        options = StateDictOptions(ignore_frozen_params=True, strict=False)
        set_state_dict(
            model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"], options=options
        )
        self.load_schedule(folder, scheduler)

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
