"""The CLI's one vocabulary: how positional arguments split into files and `key=value` overrides, the options
every command spells alike (same long and short flags), and which config key each shortcut flag sets.

Flags are shortcuts for config keys: `--temperature 0.7` is `generate.temperature=0.7`, validated by the config
models like any other key (so `--dtype`, `--backend` and friends have no choice lists here). Later wins: the
config file, then the flags, then the positional key=value overrides.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from tunellm.config.load import Override
from tunellm.errors import ConfigError

# flag name (the parameter's name) -> the config key it sets
KEYS = {
    "data": "data.train",
    "dev": "data.dev",
    "output": "train.output_dir",
    "model": "model.name_or_path",
    "template": "data.template",
    "format": "data.format",
    "skip_bad": "data.skip_bad",
    "dtype": "model.dtype",
    "backend": "eval.backend",
    "max_new_tokens": "generate.max_new_tokens",
    "temperature": "generate.temperature",
    "top_p": "generate.top_p",
    "top_k": "generate.top_k",
    "repetition_penalty": "generate.repetition_penalty",
    "stop": "generate.stop",
    "seed": "generate.seed",
    "system": "generate.system",
}

# the options shared by several commands: (long flag, short flag or None, help)
SHARED = {
    "model": ("--model", "-m", "base model: hub name, folder or .gguf (model.name_or_path); default: the "
              "checkpoint's, else the embedded default"),
    "template": ("--template", "-t", "prompt template (data.template); default: the checkpoint's, else the model's"),
    "device": ("--device", "-d", "cpu, cuda, cuda:1 ...; default: CUDA when available"),
    "adapter": ("--adapter", "-a", "checkpoint folder (step-N), or a training output_dir: its best, else newest, "
                "checkpoint"),
    "output": ("--output", "-o", "where to write"),
    "batch_size": ("--batch-size", None, "rows generated together"),
    "backend": ("--backend", None, "auto, transformers or vllm (auto: vLLM when usable)"),
    "progress": ("--progress/--no-progress", None, "show a progress bar on a terminal"),
    "host": ("--host", None, "address to listen on; 0.0.0.0 opens it to the network"),
    "port": ("--port", None, "port to listen on"),
    "max_new_tokens": ("--max-new-tokens", None, "longest reply in tokens (generate.max_new_tokens)"),
    "temperature": ("--temperature", None, "sampling temperature, 0 is greedy (generate.temperature)"),
    "top_p": ("--top-p", None, "nucleus sampling: keep the likeliest tokens up to this mass (generate.top_p)"),
    "top_k": ("--top-k", None, "sample among the K likeliest tokens, 0 is off (generate.top_k)"),
    "repetition_penalty": ("--repetition-penalty", None, "> 1 discourages repeats (generate.repetition_penalty)"),
    "seed": ("--seed", None, "seed for sampling, for repeatable replies (generate.seed)"),
    "stop": ("--stop", None, "a stop string besides the template's end of turn; repeatable (generate.stop)"),
    "system": ("--system", None, "system prompt (generate.system); default: the one training used"),
    "skip_bad": ("--skip-bad", None, "skip malformed records, count and list them (data.skip_bad)"),
    "format": ("--format", "-f", "data format (data.format); default: detected per file"),
    "config": ("--config", "-c", "a run config whose settings apply"),
}  # fmt: skip

SAMPLING = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "stop", "system")


def option(name: str, default: Any = None, *, help: str | None = None, **extra: Any) -> Any:
    """The typer option `name` as every command spells it; `help` replaces the shared text where the command
    means something narrower."""
    long, short, shared_help = SHARED[name]
    flags = [long] if short is None else [long, short]
    return typer.Option(default, *flags, help=help or shared_help, **extra)


OVERRIDES = typer.Argument(
    None, metavar="[KEY=VALUE]...", help="config overrides as key=value, e.g. generate.temperature=0.7",
    show_default=False,
)  # fmt: skip
FILES_AND_OVERRIDES = typer.Argument(
    None, metavar="FILE... [KEY=VALUE]...", help="files or globs, then key=value config overrides", show_default=False
)
CONFIG_AND_OVERRIDES = typer.Argument(
    None, metavar="[CONFIG.yaml] [KEY=VALUE]...", help="a config file (optional), then key=value overrides",
    show_default=False,
)  # fmt: skip


def is_override(arg: str) -> bool:
    """`key=value`, unless it names an existing file (a file name may hold `=`)."""
    return "=" in arg and not Path(arg).exists()


def split_args(args: list[str] | None, *, files: int | None = None, what: str = "file") -> tuple[list[str], list[str]]:
    """Positional arguments as (files, key=value overrides), in any order. `files` caps the files a command takes
    (0: overrides only, 1: an optional config file); an extra one is an error that says what was expected."""
    args = list(args or [])
    found = [arg for arg in args if not is_override(arg)]
    if files is not None and len(found) > files:
        extra = found[files:]
        expected = "key=value config overrides" if files == 0 else f"at most {files} {what}, then key=value overrides"
        raise ConfigError(f"unexpected argument(s): {' '.join(extra)}", expected=expected)
    return found, [arg for arg in args if is_override(arg)]


def config_and_overrides(args: list[str] | None) -> tuple[str | None, list[str]]:
    """An optional config file and the key=value overrides (train, doctor, config show)."""
    found, overrides = split_args(args, files=1, what="config file")
    return (found[0] if found else None), overrides


def shortcuts(**flags: Any) -> list[Override]:
    """The given flags as overrides of their config keys (None and False mean not given), each naming its flag.
    Values are JSON-encoded, so paths with `:` or `*` stay strings and lists stay lists."""
    found = []
    for name, value in flags.items():
        if value is None or value is False or value == []:
            continue
        flag = "--" + name.replace("_", "-")
        found.append(Override(f"{KEYS[name]}={json.dumps(value, ensure_ascii=False)}", origin=flag))
    return found
