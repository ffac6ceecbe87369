"""`tunellm config show|example`."""

from __future__ import annotations

import typer

from tunellm.config.example import example_yaml
from tunellm.config.load import load_config, to_yaml

app = typer.Typer(no_args_is_help=True, help="Show the resolved configuration or a commented example.")


def split_config_and_overrides(args: list[str]) -> tuple[str | None, list[str]]:
    """The first argument is the config file unless it is already a key=value override."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


@app.command()
def show(args: list[str] = typer.Argument(None, help="[CONFIG.yaml] [key=value ...]")) -> None:
    """Print the resolved configuration: file, then overrides, validated."""
    path, overrides = split_config_and_overrides(args or [])
    typer.echo(to_yaml(load_config(path, overrides)), nl=False)


@app.command()
def example() -> None:
    """Print a full example configuration with every key, its default and what it does."""
    typer.echo(example_yaml(), nl=False)
