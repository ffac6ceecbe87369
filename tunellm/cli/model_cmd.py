"""`tunellm model default` and `tunellm model convert`."""

from __future__ import annotations

from pathlib import Path

import typer

from tunellm.errors import ConfigError, ModelError

app = typer.Typer(no_args_is_help=True, help="Models: locate and prepare them.")


@app.command("default")
def default_model() -> None:
    """Convert the embedded default model (SmolLM2-135M-Instruct) once and print its folder."""
    from tunellm.models.default import default_model_dir

    typer.echo(str(default_model_dir()))


@app.command("convert")
def convert(
    source: str = typer.Argument(..., metavar="NAME_OR_PATH", help="a ChatGLM2/3 or Baichuan-7B checkpoint folder"),
    output: Path = typer.Option(..., "--output", "-o", help="the new folder to write"),
    to_original: bool = typer.Option(
        False,
        "--to-original",
        help="the other way: write a native conversion (or a merge of one) back in the checkpoint's original "
        "layout, for people who run the original code",
    ),
) -> None:
    """Write the native transformers form of a checkpoint that ships remote code (what loading does in the
    cache), or, with --to-original, the original layout of a native conversion or merge."""
    from tunellm.models.convert.native import convert_folder, local_folder, write_original

    folder = local_folder(source)
    if folder is None:
        raise ModelError("model folder not found", file=source, field="NAME_OR_PATH")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError("the output folder exists and is not empty", file=str(output), field="--output")
    output.mkdir(parents=True, exist_ok=True)
    if to_original:
        write_original(folder, output)
    else:
        convert_folder(folder, output)
    typer.echo(str(output))
