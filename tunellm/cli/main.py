"""The `tunellm` command: one sub-app per command group, each in its own file."""

from __future__ import annotations

import typer

from tunellm import __version__

app = typer.Typer(no_args_is_help=True, add_completion=False, help="tunellm: fine-tune chat LLMs on your instruction data.")


@app.command()
def version() -> None:
    """Print the tunellm version."""
    typer.echo(__version__)
