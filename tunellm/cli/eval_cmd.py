"""`tunellm eval DATA... [--adapter PATH]... [--compare] [--output DIR]`: score models, print a Markdown table."""

from __future__ import annotations

from pathlib import Path

import typer

from tunellm.cli.chat_cmd import DEVICE, MODEL, TEMPLATE, quiet_loading
from tunellm.cli.predict_cmd import split_data_and_overrides
from tunellm.errors import ConfigError


def evaluate(
    args: list[str] = typer.Argument(
        ..., metavar="DATA... [KEY=VALUE]...", help="data files or globs, then config overrides", show_default=False
    ),
    adapter: list[str] | None = typer.Option(
        None,
        "--adapter",
        help="checkpoint folder or training output_dir (its best checkpoint); repeat to compare several",
    ),
    model: str | None = MODEL,
    template: str | None = TEMPLATE,
    compare: bool = typer.Option(
        False, "--compare", help="also score the base model (the adapter switched off) and show the differences"
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="folder for metrics.json, predictions.jsonl, metrics.md and metrics.png"
    ),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="rows generated (and scored for loss) together"),
    max_rows: int | None = typer.Option(None, "--max-rows", min=1, help="score N rows spread over the data"),
    max_new_tokens: int | None = typer.Option(
        None, "--max-new-tokens", min=1, help="longest answer in tokens; default eval.max_new_tokens"
    ),
    backend: str | None = typer.Option(
        None, "--backend", help="auto, transformers or vllm; default eval.backend (auto: vLLM when usable)"
    ),
    device: str | None = DEVICE,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar on a terminal"),
) -> None:
    """Score a model, or several side by side, on DATA: loss, perplexity, and per task the metric its rows call for.

    Accuracy (choices, one-label lists), triple F1 (JSON extraction), BLEU-4 and ROUGE (free text), exact match.
    """
    data, overrides = split_data_and_overrides(args)
    if not data:
        raise ConfigError("no data files given", expected="tunellm eval DATA... [--adapter PATH]")
    if backend is not None and backend not in ("auto", "transformers", "vllm"):
        raise ConfigError(f"unknown backend '{backend}'", field="--backend", expected="auto, transformers or vllm")
    quiet_loading()
    from tunellm.evaluate import EvalRequest, evaluate_checkpoints
    from tunellm.evaluate.report import markdown_report

    request = EvalRequest(
        data=data,
        adapters=list(adapter or []),
        model=model,
        template=template,
        compare=compare,
        overrides=overrides,
        output=output,
        batch_size=batch_size,
        max_rows=max_rows,
        max_new_tokens=max_new_tokens,
        backend=backend,
        device=device,
        show_progress=progress,
    )
    results = evaluate_checkpoints(request)
    typer.echo(markdown_report(results), nl=False)
    if output is not None:
        typer.echo(f"wrote metrics.json, predictions.jsonl, metrics.md and metrics.png to {output}", err=True)
