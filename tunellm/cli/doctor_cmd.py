"""`tunellm doctor [CONFIG.yaml] [--data FILE ...] [--gpu NAME] [--json] [key=value ...]`: check a run first."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from tunellm.cli.args import CONFIG_AND_OVERRIDES, config_and_overrides, option, shortcuts
from tunellm.cli.train_cmd import DATA, DEV

MARKS = {"pass": "[green]PASS[/]", "warn": "[yellow]WARN[/]", "fail": "[bold red]FAIL[/]"}


def print_results(results: list[Any], out: Console) -> None:
    for result in results:
        out.print(f"{MARKS[result.status]} {result.name:<18} {escape(result.message)}")
        for line in result.details:
            out.print("     " + escape(line), style="dim")


def doctor(
    args: list[str] = CONFIG_AND_OVERRIDES,
    data: list[str] = DATA,
    dev: list[str] = DEV,
    model: str = option("model", help="model name or path: model.name_or_path"),
    gpu: str = typer.Option(
        None, "--gpu", help="estimate for this GPU instead of the detected hardware, e.g. H100-80GB"
    ),
    gpus: int = typer.Option(1, "--gpus", min=1, help="processes (GPUs) the run is spread over"),
    sharding: str = typer.Option("none", "--sharding", help="none, ddp, zero1, zero2, zero3 or fsdp"),
    only: list[str] = typer.Option(None, "--only", help="run only these check groups: data, template, memory"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of lines"),
) -> None:
    """Check a run in seconds, without loading weights: data, template and end-of-turn, memory and time.

    Same arguments as `tunellm train`. Exits 1 when a check fails.
    """
    from typing import get_args

    from tunellm.config.load import load_config
    from tunellm.doctor.estimate import Sharding
    from tunellm.errors import ConfigError

    if sharding not in get_args(Sharding):  # the estimator's own Literal: one list of the choices
        choices = ", ".join(get_args(Sharding))
        raise ConfigError(f"--sharding {sharding!r} is unknown", field="--sharding", expected=choices)
    path, overrides = config_and_overrides(args)
    config = load_config(path, [*shortcuts(data=data, dev=dev, model=model), *overrides])
    from transformers.utils import logging as hf_logging

    from tunellm.doctor import Context, Parallel, run_checks
    from tunellm.doctor.hardware import named_gpu

    hf_logging.disable_progress_bar()
    hardware = named_gpu(gpu, gpus) if gpu else None
    context = Context(config, hardware, Parallel(gpus, sharding))
    results = run_checks(context, only or None)
    failed = any(result.status == "fail" for result in results)
    if as_json:
        summary = {"ok": not failed, "checks": [result.to_json() for result in results]}
        typer.echo(json.dumps(summary, ensure_ascii=False, default=str))
    else:
        print_results(results, Console(highlight=False, soft_wrap=True))
    if failed:
        sys.exit(1)
