"""Run the CLI in one voice: every error, ours or a usage error, prints as `error: ...` and exits 2.

A TunellmError names where the bad value came from and what was expected; `--debug` (anywhere on the
command line) re-raises it with its traceback instead.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from tunellm.errors import TunellmError

try:  # typer 0.22+ carries its own copy of click; older ones use click itself
    from typer._click import exceptions as click
except ImportError:  # pragma: no cover
    from click import exceptions as click  # type: ignore[no-redef]

EXIT_ERROR = 2


def say_error(message: str) -> None:
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}", markup=True)


def usage_message(error: click.UsageError) -> str:
    """click's message, plus where to read the command's options."""
    command = error.ctx.command_path if error.ctx is not None else "tunellm"
    return f"{error.format_message()}\n  hint: `{command} --help` lists the arguments and options"


def run_with_clean_errors(app: object) -> None:
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    try:
        code = app(standalone_mode=False)  # type: ignore[operator]
    except TunellmError as error:
        if debug:
            raise
        say_error(str(error))
        sys.exit(EXIT_ERROR)
    except click.NoArgsIsHelpError as error:  # `tunellm data` alone: typer printed the help when raising it
        if error.format_message().strip():
            print(error.format_message())
        sys.exit(EXIT_ERROR)
    except click.UsageError as error:
        if debug:
            raise
        say_error(usage_message(error))
        sys.exit(EXIT_ERROR)
    except click.ClickException as error:
        if debug:
            raise
        say_error(error.format_message())
        sys.exit(EXIT_ERROR)
    except typer.Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
