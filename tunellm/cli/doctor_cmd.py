"""`tunellm doctor [CONFIG.yaml] [--data FILE ...] [--gpu NAME] [--json] [key=value ...]`: check a run first."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from tunellm.cli.config_cmd import split_config_and_overrides
from tunellm.cli.train_cmd import shortcut_overrides
from tunellm.config.load import load_config

MARKS = {"pass": "[green]PASS[/]", "warn": "[yellow]WARN[/]", "fail": "[bold red]FAIL[/]"}
SHARDING = ("none", "ddp", "zero1", "zero2", "zero3", "fsdp")


def print_results(results: list[Any], out: Console) -> None:
    for result in results:
        out.print(f"{MARKS[result.status]} {result.name:<18} {escape(result.message)}")
        for line in result.details:
            out.print("     " + escape(line), style="dim")


def doctor(
    args: list[str] = typer.Argument(
        None, metavar="CONFIG.yaml KEY=VALUE", help="a config file (optional), then key=value overrides"
    ),
    data: list[str] = typer.Option(None, "--data", help="training file or glob (repeatable): data.train"),
    dev: list[str] = typer.Option(None, "--dev", help="dev file or glob (repeatable): data.dev"),
    model: str = typer.Option(None, "--model", help="model name or path: model.name_or_path"),
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
    from transformers.utils import logging as hf_logging

    from tunellm.doctor import Context, Parallel, run_checks
    from tunellm.doctor.hardware import named_gpu
    from tunellm.errors import ConfigError

    if sharding not in SHARDING:
        raise ConfigError(f"unknown sharding '{sharding}'", field="--sharding", expected=", ".join(SHARDING))
    path, overrides = split_config_and_overrides(args or [])
    config = load_config(path, shortcut_overrides(data or [], dev or [], None, model) + overrides)
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
