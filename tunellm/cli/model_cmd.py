"""`tunellm model default`."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, help="Models: locate and prepare them.")


@app.command("default")
def default_model() -> None:
    """Convert the embedded default model (SmolLM2-135M-Instruct) once and print its folder."""
    from tunellm.models.default import default_model_dir

    typer.echo(str(default_model_dir()))
