"""`tunellm data convert|stats|preview`: check data before any GPU time is spent on it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from tunellm.cli.args import FILES_AND_OVERRIDES, option, shortcuts, split_args
from tunellm.errors import ConfigError, DataError

if TYPE_CHECKING:
    from tunellm.data.read import ReadResult

app = typer.Typer(no_args_is_help=True, help="Convert, check and inspect training data.")
console = Console(stderr=True, highlight=False, soft_wrap=True)

FormatOption = option("format")
SkipBadOption = option("skip_bad", False)
ConfigOption = option("config", help="a run config whose data (and model) sections apply")
ModelOption = option("model", help="model whose tokenizer and template to use (model.name_or_path)")
TemplateOption = option("template", help="prompt template (data.template); default: the model's")


def resolve(args: list[str] | None, config: str | None, **flags: Any) -> tuple[Any, list[str]]:
    """The run config (file, then flags, then key=value) and the data files: those given, else data.train."""
    from tunellm.config.load import load_config

    files, overrides = split_args(args)
    run = load_config(config, [*shortcuts(**flags), *overrides])
    return run, files or list(run.data.train)


@dataclass
class Inputs:
    """What stats and preview work on: the records read, and the tokenizer, template and options of the run."""

    result: ReadResult
    tokenizer: Any
    template: Any
    options: Any


def load_inputs(args: list[str] | None, config: str | None, **flags: Any) -> Inputs:
    from transformers.utils import logging

    from tunellm.data.prepare import choose_template, read_data
    from tunellm.data.tokenize import TokenizeOptions
    from tunellm.models.tokenizer import load_tokenizer_and_template

    run, files = resolve(args, config, **flags)
    result = read_data(files, run.data)  # bad data fails before the tokenizer loads
    logging.disable_progress_bar()
    tokenizer, family_template = load_tokenizer_and_template(run.model)
    template = choose_template(files, run.data, tokenizer, family_template)
    return Inputs(result, tokenizer, template, TokenizeOptions.from_config(run.data))


@app.command()
def convert(
    args: list[str] = FILES_AND_OVERRIDES,
    output: Path = option("output", ..., help="normalized JSON Lines file to write"),
    format: str = FormatOption,
    skip_bad: bool = SkipBadOption,
    prediction: bool = typer.Option(False, "--prediction", help="records may lack a response (inputs to predict)"),
    config: str = ConfigOption,
) -> None:
    """Read any supported format and write one normalized JSONL file (OpenAI-style messages)."""
    from tunellm.atomic import write_jsonl_atomic
    from tunellm.data.prepare import read_data

    run, files = resolve(args, config, format=format, skip_bad=skip_bad)
    result = read_data(files, run.data, require_response=not prediction)
    if not result.conversations:  # an empty output would only fail later, in every command that reads it
        raise DataError(
            f"no record left to write: all {result.total} were skipped as bad",
            file=", ".join(result.formats),
            hint=result.summary(),
        )
    write_jsonl_atomic(output, (conversation.to_json() for conversation in result.conversations))
    console.print(result.summary())
    console.print(f"wrote {len(result.conversations):,} records to {output}")


@app.command()
def stats(
    args: list[str] = FILES_AND_OVERRIDES,
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of tables"),
    histogram: Path | None = typer.Option(None, "--histogram", help="also write a token-length histogram PNG here"),
    format: str = FormatOption,
    skip_bad: bool = SkipBadOption,
    model: str = ModelOption,
    template: str = TemplateOption,
    config: str = ConfigOption,
) -> None:
    """Rows, bad rows, prompt/response token lengths (describe table), truncation; a histogram with --histogram."""
    from tunellm.data.inspect import compute_stats, plot_histogram

    inputs = load_inputs(args, config, format=format, skip_bad=skip_bad, model=model, template=template)
    data_stats = compute_stats(inputs.result, inputs.tokenizer, inputs.template, inputs.options)
    summary = data_stats.to_json() | {"template": inputs.template.name}
    if histogram is not None:
        summary["histogram"] = str(plot_histogram(data_stats, histogram))
    if as_json:
        typer.echo(json.dumps(summary, ensure_ascii=False))
        return
    console.print(inputs.result.summary())
    print_stats(summary)


def print_stats(summary: dict[str, Any]) -> None:
    from rich.table import Table

    out = Console(highlight=False)
    rows = f"{summary['rows']:,} rows, {summary['bad_rows']:,} bad"
    out.print(f"format {summary['format']}, template {summary['template']}: {rows}")
    table = Table("tokens", "prompt", "response", "total")
    for key in summary["prompt_tokens"]:
        cells = [summary[part][key] for part in ("prompt_tokens", "response_tokens", "total_tokens")]
        table.add_row(key, *(f"{value:,.0f}" if key == "count" else f"{value:,.1f}" for value in cells))
    out.print(table)
    out.print(
        f"truncated at cutoff_len {summary['cutoff_len']}: {summary['truncated']:,} "
        f"({summary['truncation_rate']:.1%}); fully masked after truncation: {summary['fully_masked']:,}"
    )
    if summary["fully_masked"]:
        out.print(
            "  excluded from training (nothing left to train on): " + ", ".join(summary["fully_masked_sources"][:10])
        )
    if "histogram" in summary:
        out.print(f"histogram: {summary['histogram']}")


@app.command()
def preview(
    args: list[str] = FILES_AND_OVERRIDES,
    count: int = typer.Option(3, "--count", "-n", help="samples to show"),
    start: int = typer.Option(0, "--start", help="index of the first sample"),
    format: str = FormatOption,
    skip_bad: bool = SkipBadOption,
    model: str = ModelOption,
    template: str = TemplateOption,
    config: str = ConfigOption,
) -> None:
    """Show samples as the model sees them: trained tokens in green, masked (prompt) tokens dimmed."""
    from rich.text import Text

    from tunellm.data.inspect import token_runs

    inputs = load_inputs(args, config, format=format, skip_bad=skip_bad, model=model, template=template)
    out = Console(highlight=False, soft_wrap=True)
    marks = not out.is_terminal  # without colour, trained text is bracketed so the difference stays visible
    legend = "; trained text is in [[...]]" if marks else ""
    out.print(f"template {inputs.template.name}; [green]trained[/] vs [dim]masked[/]{legend}")
    shown = inputs.result.conversations[start : start + count]
    if not shown:
        held = len(inputs.result.conversations)
        raise ConfigError(f"no sample at index {start}: the data has {held}", field="--start", expected=f"< {held}")
    for conversation in shown:
        out.rule(str(conversation.source))
        text = Text()
        for run_text, trained in token_runs(conversation, inputs.tokenizer, inputs.template, inputs.options):
            text.append(f"[[{run_text}]]" if trained and marks else run_text, style="bold green" if trained else "dim")
        out.print(text)
