"""The `tunellm` command: one sub-app per command group, each in its own file."""

from __future__ import annotations

import logging

import typer

from tunellm import __version__
from tunellm.cli import (
    chat_cmd,
    config_cmd,
    data_cmd,
    doctor_cmd,
    eval_cmd,
    merge_cmd,
    model_cmd,
    predict_cmd,
    serve_cmd,
    train_cmd,
    ui_cmd,
)
from tunellm.cli.errors import run_with_clean_errors
from tunellm.cli.process import own_process

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="tunellm: fine-tune chat LLMs on your instruction data.",
)


@app.callback()
def options(
    debug: bool = typer.Option(
        False, "--debug", help="on an error, show its traceback (works anywhere on the command line)"
    ),
) -> None:
    """--debug is taken off the command line before parsing (errors.py); it is declared here to show in --help."""


# listed in the order of the data flow
app.add_typer(data_cmd.app, name="data")
app.command("doctor")(doctor_cmd.doctor)
app.command("train")(train_cmd.train)
app.command("eval")(eval_cmd.evaluate)
app.command("chat")(chat_cmd.chat)
app.command("predict")(predict_cmd.predict)
app.command("merge")(merge_cmd.merge)
app.command("serve")(serve_cmd.serve)
app.command("ui")(ui_cmd.ui)
app.add_typer(config_cmd.app, name="config")
app.add_typer(model_cmd.app, name="model")


@app.command()
def version() -> None:
    """Print the tunellm version."""
    typer.echo(__version__)


def main() -> None:
    # bitsandbytes (installed for QLoRA) says at import, through peft, that optional CPU kernels are missing;
    # it falls back to its own code, so the line is noise on every command
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    own_process()
    run_with_clean_errors(app)
