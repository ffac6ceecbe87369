"""`tunellm doctor`: pre-flight checks of a run (data, template, memory and time) without loading weights."""

from tunellm.doctor import checks  # noqa: F401  (registers the check groups)
from tunellm.doctor.base import CHECKS, Context, Parallel, Result, run_checks

__all__ = ["CHECKS", "Context", "Parallel", "Result", "run_checks"]
