"""The `tunellm` command: one sub-app per command group, each in its own file."""

from __future__ import annotations

import typer

from tunellm import __version__
from tunellm.cli import chat_cmd, config_cmd, data_cmd, model_cmd, predict_cmd
from tunellm.cli.errors import run_with_clean_errors
from tunellm.cli.train_cmd import train

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="tunellm: fine-tune chat LLMs on your instruction data. Add --debug for tracebacks.",
)
app.command("train")(train)
app.add_typer(config_cmd.app, name="config")
app.add_typer(model_cmd.app, name="model")
app.command("chat")(chat_cmd.chat)
app.command("predict")(predict_cmd.predict)
app.add_typer(data_cmd.app, name="data")


@app.command()
def version() -> None:
    """Print the tunellm version."""
    typer.echo(__version__)


def main() -> None:
    run_with_clean_errors(app)
