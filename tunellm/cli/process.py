"""Process-wide settings a command makes before it imports the model stack.

They change the whole Python process, so they apply only when the command owns its process: started by the `tunellm`
entry point (`main` calls `own_process`), not run through typer's CliRunner in a test or called from Python, whose
process goes on to do other things.
"""

from __future__ import annotations

import sys

_owned = False


def own_process() -> None:
    global _owned
    _owned = True


def quiet_loading() -> None:
    """No per-file weight-loading bars from transformers: the command prints what it loaded."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def without_bitsandbytes() -> None:
    """For a command that quantizes nothing: bitsandbytes counts as not installed (Python's marker for a blocked
    module, `sys.modules[name] = None`, which `find_spec` and `import` honour).

    peft imports bitsandbytes whenever it is installed (`peft/helpers.py`), 1.6 s of a start-up on a 2-core CPU,
    though only QLoRA uses it, and inference loads every base unquantized. Call it before peft is imported; it does
    nothing once bitsandbytes is loaded, or when the command does not own its process."""
    if _owned:
        sys.modules.setdefault("bitsandbytes", None)


def for_training(method: str) -> None:
    """train: no bitsandbytes unless the method uses it (QLoRA)."""
    from tunellm.methods import METHODS

    if not getattr(METHODS.get(method), "uses_bitsandbytes", False):
        without_bitsandbytes()


def for_inference() -> None:
    """chat, predict, eval, merge and serve: quiet weight loading, no bitsandbytes."""
    without_bitsandbytes()
    quiet_loading()
