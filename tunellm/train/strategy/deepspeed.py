"""`train.distributed: deepspeed`: DeepSpeed ZeRO stage 2 or 3, optionally offloading to the CPU (`tunellm[deepspeed]`).

The DeepSpeed config is generated from the run's config (`deepspeed_config`): the user writes no JSON. DeepSpeed
does the accumulation inside `backward` (gradients are reduced at the boundary the strategy marks on a step's last
micro-batch), and clipping and the fp16 loss scale inside `step`; the loss arrives already normalised over the
step's trained tokens, so `backward` is told not to divide by the accumulation steps again. The learning-rate
schedule stays tunellm's, stepped only when DeepSpeed applied the step. Resume state is DeepSpeed's own checkpoint
(`state/deepspeed/`); the exported weights are gathered (ZeRO-3) and written as the method's plain files.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tunellm.errors import ConfigError
from tunellm.train.strategy.base import STRATEGIES, OptimizerFactory, Strategy

TAG = "deepspeed"  # DeepSpeed's checkpoint tag: state/deepspeed/ holds its files, state/latest names it


def deepspeed_config(cfg: Any, world: int) -> dict[str, Any]:
    """The DeepSpeed config for a run: ZeRO stage, offload, precision, clipping, batch sizes."""
    stage = cfg.zero_stage or 2
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True}
    if cfg.offload in ("optimizer", "all"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if cfg.offload == "all":
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": cfg.per_device_train_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "train_batch_size": cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world,
        "gradient_clipping": cfg.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.bf16},
        "fp16": {"enabled": cfg.fp16, "loss_scale": 0, "initial_scale_power": 16},
        "zero_allow_untested_optimizer": True,  # tunellm's AdamW (or the method's own) is passed in
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def _import_deepspeed() -> Any:
    try:
        import deepspeed
    except ImportError:
        raise ConfigError(
            "train.distributed=deepspeed needs DeepSpeed",
            field="train.distributed",
            hint="pip install 'tunellm[deepspeed]', or use distributed=fsdp",
        ) from None
    return deepspeed


@STRATEGIES.register("deepspeed")
class DeepSpeedStrategy(Strategy):
    name = "deepspeed"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.deepspeed = _import_deepspeed()
        self.dtype, self.scaler = None, None  # DeepSpeed keeps the precision and the loss scale
        import torch.distributed as dist

        if not dist.is_initialized():  # one process: DeepSpeed still wants a process group, of one
            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
            for key in ("LOCAL_RANK", "RANK"):
                os.environ.setdefault(key, "0")
            os.environ.setdefault("WORLD_SIZE", "1")
        self.deepspeed.init_distributed(dist_backend=dist.get_backend())

    def prepare(self, model: Any, make_optimizer: OptimizerFactory) -> tuple[Any, Any]:
        optimizer = make_optimizer(model)
        engine, _, _, _ = self.deepspeed.initialize(
            model=model, optimizer=optimizer, config=deepspeed_config(self.cfg, self.world)
        )
        self.device = engine.device if isinstance(engine.device, torch.device) else torch.device(engine.device)
        return engine, optimizer  # the schedule drives the wrapped optimizer's param groups

    def unwrap(self, model: Any) -> Any:
        return model.module

    def backward(self, model: Any, loss: torch.Tensor, last: bool) -> None:
        model.set_gradient_accumulation_boundary(last)
        model.backward(loss, scale_wrt_gas=False)

    def clip(self, model: Any, optimizer: Any, max_norm: float) -> torch.Tensor | None:
        return None  # DeepSpeed clips inside step (gradient_clipping)

    def step(self, model: Any, optimizer: Any, scheduler: Any) -> torch.Tensor | None:
        model.step()
        if model.was_step_applied():
            scheduler.step()
        norm = model.get_global_grad_norm()
        return None if norm is None else torch.as_tensor(float(norm))

    def skip(self, model: Any, optimizer: Any) -> None:
        model.zero_grad()

    def _gathered(self, model: Any) -> contextlib.AbstractContextManager[Any]:
        """ZeRO-3 partitions the weights: gather the trainable ones for reading (no change is written back)."""
        if (self.cfg.zero_stage or 2) != 3:
            return contextlib.nullcontext()
        trainable = [p for p in self.unwrap(model).parameters() if p.requires_grad]
        return self.deepspeed.zero.GatheredParameters(trainable, modifier_rank=None)

    def export(self, model: Any, folder: Path, save: Callable[[Any, Path], None]) -> None:
        self.progress("gather weights")
        with self._gathered(model):
            if self.is_main:
                save(self.unwrap(model), folder)

    def save_state(self, checkpoint: Path, model: Any, optimizer: Any, scheduler: Any) -> None:
        from tunellm.train import optim_state

        folder = checkpoint / optim_state.STATE_DIR
        self.progress("save DeepSpeed state")
        model.save_checkpoint(str(folder), tag=TAG, exclude_frozen_parameters=True)  # LoRA: not the base
        self.save_schedule(folder, scheduler)

    def load_state(
        self, checkpoint: Path, model: Any, optimizer: Any, scheduler: Any, load: Callable[[Any, Path], None]
    ) -> None:
        from tunellm.train import optim_state

        folder = checkpoint / optim_state.STATE_DIR
        self.progress("load DeepSpeed state")
        path, _ = model.load_checkpoint(str(folder), tag=TAG, load_module_strict=False)
        if path is None:
            raise ConfigError("DeepSpeed found no checkpoint to load", file=str(folder / TAG))
        self.load_schedule(folder, scheduler)

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
