"""`tunellm predict DATA... --output OUT.jsonl`: one generated reply per record, as JSON Lines."""

from __future__ import annotations

import typer

from tunellm.cli.args import FILES_AND_OVERRIDES, option, split_args
from tunellm.cli.chat_cmd import describe, load_for_generation
from tunellm.errors import ConfigError


def predict(
    args: list[str] = FILES_AND_OVERRIDES,
    output: str = option("output", ..., help="JSON Lines file to write"),
    adapter: str | None = option("adapter"),
    model: str | None = option("model"),
    template: str | None = option("template"),
    batch_size: int = option("batch_size", 8, min=1),
    max_new_tokens: int | None = option("max_new_tokens"),
    temperature: float | None = option("temperature"),
    top_p: float | None = option("top_p"),
    top_k: int | None = option("top_k"),
    repetition_penalty: float | None = option("repetition_penalty"),
    seed: int | None = option("seed"),
    stop: list[str] | None = option("stop"),
    system: str | None = option("system", help="system prompt for records without one (generate.system)"),
    device: str | None = option("device"),
    progress: bool = option("progress", True),
) -> None:
    """Generate a reply for every record of DATA (any tunellm format); records with a reply keep it as reference."""
    data, overrides = split_args(args)
    if not data:
        raise ConfigError("no data files given", expected="tunellm predict DATA... --output OUT.jsonl")
    loaded = load_for_generation(
        adapter, model, template, device, overrides, max_new_tokens=max_new_tokens, temperature=temperature,
        top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty, seed=seed, stop=stop, system=system,
    )  # fmt: skip
    from tunellm.infer.predict import predict as run_predict

    typer.echo(describe(loaded), err=True)
    summary = run_predict(loaded, data, output, batch_size=batch_size, show_progress=progress)
    for error in summary.skipped[:10]:
        typer.echo(f"skipped: {str(error).splitlines()[0]}", err=True)
    cut = summary.rows - summary.stopped
    note = f" ({cut} hit generate.max_new_tokens {loaded.config.generate.max_new_tokens})" if cut else ""
    typer.echo(f"wrote {summary.rows} predictions to {summary.output}{note}", err=True)
