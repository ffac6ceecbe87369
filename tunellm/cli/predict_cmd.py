"""`tunellm predict DATA... --output OUT.jsonl`: one generated reply per record, as JSON Lines."""

from __future__ import annotations

import typer

from tunellm.cli.chat_cmd import (
    ADAPTER,
    DEVICE,
    MAX_NEW_TOKENS,
    MODEL,
    REPETITION_PENALTY,
    SEED,
    TEMPERATURE,
    TEMPLATE,
    TOP_K,
    TOP_P,
    config_overrides,
    describe,
    quiet_loading,
    sampling_options,
)
from tunellm.errors import ConfigError


def split_data_and_overrides(args: list[str]) -> tuple[list[str], list[str]]:
    """Data files come first, then key=value overrides."""
    data = []
    for arg in args:
        if "=" in arg:
            break
        data.append(arg)
    return data, config_overrides(args[len(data) :])


def predict(
    args: list[str] = typer.Argument(
        ..., metavar="DATA... [KEY=VALUE]...", help="data files or globs, then config overrides", show_default=False
    ),
    output: str = typer.Option(..., "--output", "-o", help="JSON Lines file to write"),
    adapter: str | None = ADAPTER,
    model: str | None = MODEL,
    template: str | None = TEMPLATE,
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="prompts generated together"),
    max_new_tokens: int | None = MAX_NEW_TOKENS,
    temperature: float = TEMPERATURE,
    top_p: float = TOP_P,
    top_k: int = TOP_K,
    repetition_penalty: float = REPETITION_PENALTY,
    seed: int | None = SEED,
    device: str | None = DEVICE,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar on a terminal"),
) -> None:
    """Generate a reply for every record of DATA (any tunellm format); records with a reply keep it as reference."""
    data, overrides = split_data_and_overrides(args)
    if not data:
        raise ConfigError("no data files given", expected="tunellm predict DATA... --output OUT.jsonl")
    quiet_loading()
    from tunellm.infer.load import load_for_inference
    from tunellm.infer.predict import predict as run_predict

    loaded = load_for_inference(adapter, model=model, template=template, overrides=overrides, device=device)
    typer.echo(describe(loaded), err=True)
    options = sampling_options(loaded.config, max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed)
    summary = run_predict(loaded, data, output, options, batch_size=batch_size, show_progress=progress)
    for error in summary.skipped[:10]:
        typer.echo(f"skipped: {str(error).splitlines()[0]}", err=True)
    cut = summary.rows - summary.stopped
    note = f" ({cut} hit --max-new-tokens {options.max_new_tokens})" if cut else ""
    typer.echo(f"wrote {summary.rows} predictions to {summary.output}{note}", err=True)
