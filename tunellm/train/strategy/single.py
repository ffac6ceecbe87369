"""`train.distributed: none`: one process, on one GPU or the CPU, with the base strategy's mixed precision."""

from __future__ import annotations

from tunellm.train.strategy.base import STRATEGIES, Strategy


@STRATEGIES.register("none")
class SingleStrategy(Strategy):
    name = "none"
