"""Distributed strategies: one file per engine, each registered by its import line (see base.py for the seam)."""

from tunellm.train.strategy import ddp, deepspeed, fsdp, single  # noqa: F401  (importing a strategy registers it)
from tunellm.train.strategy.base import STRATEGIES, Strategy, make_strategy

__all__ = ["STRATEGIES", "Strategy", "make_strategy"]
