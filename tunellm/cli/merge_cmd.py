"""`tunellm merge ADAPTER --output DIR`: fold a checkpoint into its base model, write a plain transformers
folder, and check it against the adapter model (a failed check exits 2 with the report)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from tunellm.cli import process
from tunellm.cli.args import OVERRIDES, option, shortcuts, split_args
from tunellm.config.load import check_keys


def merge(
    adapter: str = typer.Argument(
        ...,
        metavar="ADAPTER",
        help="checkpoint folder (step-N), or a training output_dir: its best, else newest, checkpoint",
    ),
    args: list[str] = OVERRIDES,
    output: Path = option("output", ..., help="folder to write the merged model into"),
    model: str | None = option("model"),
    data: list[str] | None = typer.Option(
        None, "--data", help="take the parity prompts from these records (any tunellm format); default: built-in"
    ),
    prompts: int = typer.Option(4, "--prompts", min=1, help="prompts the parity check compares"),
    max_new_tokens: int = typer.Option(16, "--max-new-tokens", min=1, help="greedy tokens compared per prompt"),
    tolerance: float | None = typer.Option(
        None, "--tolerance", min=0, help="largest logit difference allowed; default by dtype (fp32 1e-3)"
    ),
    dtype: str | None = typer.Option(
        None,
        "--dtype",
        help="auto, float32, bfloat16 or float16 (model.dtype): load, merge and save in it; default: the run's",
    ),
    device: str | None = option("device"),
    force: bool = typer.Option(False, "--force", help="replace a non-empty output folder"),
) -> None:
    """Merge a checkpoint into its base model and write a plain transformers folder (safetensors, tokenizer with
    chat template, generation config), then check the written model against the adapter: logits and greedy replies.
    """
    _, overrides = split_args(args, files=0)
    check_keys(overrides)  # a typo fails before the model stack is imported
    process.for_inference()
    from tunellm.infer.merge import MergeOptions, merge_checkpoint
    from tunellm.infer.parity import ParityError

    options = MergeOptions(
        output=output,
        model=model,
        overrides=[*shortcuts(dtype=dtype), *overrides],
        device=device,
        data=list(data) if data else None,
        prompts=prompts,
        max_new_tokens=max_new_tokens,
        tolerance=tolerance,
        force=force,
    )
    try:
        result = merge_checkpoint(adapter, options, say=lambda line: typer.echo(line, err=True))
    except ParityError as error:
        if error.result is not None:
            print_report(error.result)
        raise
    print_report(result)
    report = result.report
    typer.echo(
        f"merged {result.checkpoint} into {result.output}: parity holds (max logit difference "
        f"{report.max_logit_diff:.3g} <= {report.tolerance:g} on {len(report.rows)} prompts)",
        err=True,
    )


def print_report(result: Any) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    report = result.report
    table = Table(
        title=f"parity: merged vs adapter ({report.dtype}, tolerance {report.tolerance:g})",
        caption="tokens: the prompt and the adapter's greedy reply, scored by both models",
    )
    for name in ("prompt", "tokens", "max |logit diff|", "greedy reply", "chat template"):
        table.add_column(name, justify="right" if name in ("tokens", "max |logit diff|") else "left")
    for row in report.rows:
        diff = f"{row.max_logit_diff:.3g}"
        greedy = row.greedy(report.tolerance)
        render = row.prompt_render
        table.add_row(
            escape(shorten(row.prompt)),
            str(row.tokens),
            diff if row.max_logit_diff <= report.tolerance else f"[red]{diff}[/]",
            f"[red]{greedy}[/]" if greedy.startswith("differs") else greedy,
            render if render in ("same", "not covered (tools)") else f"[red]{render}[/]",
        )
    console = Console()
    console.print(table)
    for k, row in enumerate(report.rows, 1):
        if row.parted_at is not None:
            replies = f"prompt {k}: adapter {row.adapter_reply!r}\n          merged  {row.merged_reply!r}"
            console.print(replies, markup=False, highlight=False)
    layers = report.layers
    if layers is not None:
        verdict = "match" if layers.passed else f"[red]{layers.failures} differ: {escape('; '.join(layers.failed))}[/]"
        console.print(
            f"weights: {layers.checked} merged LoRA layers against base + scale·B·A in float32: {verdict}"
            + (f"; {layers.not_covered} DoRA layers not covered" if layers.not_covered else "")
            + ("" if layers.resolved else f"; note: every delta is below {layers.dtype} rounding, merge in float32"),
        )
    if result.unlisted_stops:
        stops = ", ".join(repr(s) for s in result.unlisted_stops)
        console.print(
            f"note: stop strings of several tokens ({stops}) are not in generation_config.json; "
            "tunellm chat stops on them, plain transformers generate does not",
            highlight=False,
        )


def shorten(text: str, width: int = 32) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
