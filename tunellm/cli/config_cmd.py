"""`tunellm config show|example`."""

from __future__ import annotations

import typer

from tunellm.cli.args import CONFIG_AND_OVERRIDES, config_and_overrides

app = typer.Typer(no_args_is_help=True, help="Show the resolved configuration or a commented example.")


@app.command()
def show(args: list[str] = CONFIG_AND_OVERRIDES) -> None:
    """Print the resolved configuration: file, then overrides, validated."""
    from tunellm.config.load import load_config, to_yaml

    path, overrides = config_and_overrides(args)
    typer.echo(to_yaml(load_config(path, overrides)), nl=False)


@app.command()
def example() -> None:
    """Print a full example configuration with every key, its default and what it does."""
    from tunellm.config.example import example_yaml

    typer.echo(example_yaml(), nl=False)
