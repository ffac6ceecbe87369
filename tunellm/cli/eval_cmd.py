"""`tunellm eval DATA... [--adapter PATH]... [--compare] [--output DIR]`: score models, print a Markdown table."""

from __future__ import annotations

from pathlib import Path

import typer

from tunellm.cli import process
from tunellm.cli.args import FILES_AND_OVERRIDES, option, shortcuts, split_args
from tunellm.config.load import check_keys
from tunellm.errors import ConfigError


def evaluate(
    args: list[str] = FILES_AND_OVERRIDES,
    adapter: list[str] | None = option(
        "adapter", help="checkpoint folder or training output_dir (its best checkpoint); repeat to compare several"
    ),
    model: str | None = option("model"),
    template: str | None = option("template"),
    compare: bool = typer.Option(
        False, "--compare", help="also score the base model (the adapter switched off) and show the differences"
    ),
    output: Path | None = option(
        "output", help="folder for metrics.json and predictions.jsonl (per model when several), metrics.md, metrics.png"
    ),
    batch_size: int = option("batch_size", 8, min=1, help="rows generated (and scored for loss) together"),
    max_rows: int | None = typer.Option(None, "--max-rows", min=1, help="score N rows spread over the data"),
    max_new_tokens: int | None = option("max_new_tokens"),
    backend: str | None = option("backend", help="generation engine (eval.backend): auto, transformers or vllm"),
    device: str | None = option("device"),
    progress: bool = option("progress", True),
) -> None:
    """Score a model, or several side by side, on DATA: loss, perplexity, and per task the metric its rows call for.

    Accuracy (choices, one-label lists), triple F1 (JSON extraction), BLEU-4 and ROUGE (free text), exact match.
    Generation follows the `generate:` settings of each checkpoint (greedy by default).
    """
    data, overrides = split_args(args)
    if not data:
        raise ConfigError("no data files given", expected="tunellm eval DATA... [--adapter PATH]")
    flags = shortcuts(max_new_tokens=max_new_tokens, backend=backend)
    check_keys(flags + overrides)  # a typo fails before the model stack is imported
    process.for_inference()
    from tunellm.evaluate import EvalRequest, evaluate_checkpoints
    from tunellm.evaluate.report import markdown_report

    request = EvalRequest(
        data=data,
        adapters=list(adapter or []),
        model=model,
        template=template,
        compare=compare,
        overrides=[*flags, *overrides],
        output=output,
        batch_size=batch_size,
        max_rows=max_rows,
        device=device,
        show_progress=progress,
    )
    results = evaluate_checkpoints(request)
    typer.echo(markdown_report(results), nl=False)
