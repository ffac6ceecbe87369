"""Run the CLI so that a TunellmError prints as one clear message and exits 2, not as a traceback."""

from __future__ import annotations

import sys

from rich.console import Console

from tunellm.errors import TunellmError


def run_with_clean_errors(app: object) -> None:
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    try:
        app()  # type: ignore[operator]
    except TunellmError as error:
        if debug:
            raise
        Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {error}", markup=True)
        sys.exit(2)
