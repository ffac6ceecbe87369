"""`train.distributed: ddp`: torch's DistributedDataParallel; every process holds the whole model and optimizer.

Gradients are averaged over processes in the backward of a step's last micro-batch; the others run under
`no_sync`. The optimizer state is the same on every process, so the main process writes it alone and any number
of processes can resume from it.
"""

from __future__ import annotations

import contextlib
from typing import Any

from tunellm.train.strategy.base import STRATEGIES, OptimizerFactory, Strategy


@STRATEGIES.register("ddp")
class DDPStrategy(Strategy):
    name = "ddp"

    def prepare(self, model: Any, make_optimizer: OptimizerFactory) -> tuple[Any, Any]:
        model = model.to(self.device)
        optimizer = make_optimizer(model)  # on the bare module: methods see their own parameter names
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.local_rank] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        return model, optimizer

    def sync_gradients(self, model: Any, last: bool) -> contextlib.AbstractContextManager[Any]:
        if last or self.world == 1:
            return contextlib.nullcontext()
        return model.no_sync()
