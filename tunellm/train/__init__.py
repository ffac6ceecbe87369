"""Training: the loop (`fit`), its state, checkpoints, optimizer and logs."""

from tunellm.train.loop import FitResult, fit

__all__ = ["FitResult", "fit"]
