"""`tunellm chat`: talk to a base model or a trained checkpoint, interactively or with one --prompt.

The loading and sampling options are shared with `tunellm predict`.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from tunellm.errors import ConfigError

OVERRIDES = typer.Argument(
    None, metavar="[KEY=VALUE]...", help="config overrides as key=value, e.g. cutoff_len=2048", show_default=False
)
ADAPTER = typer.Option(
    None, "--adapter", help="checkpoint folder (step-N), or a training output_dir: its best, else newest, checkpoint"
)
MODEL = typer.Option(
    None, "--model", help="base model (hub name, folder, .gguf); default: the checkpoint's, else the embedded default"
)
TEMPLATE = typer.Option(None, "--template", help="chat template name; default: the one training used")
MAX_NEW_TOKENS = typer.Option(None, "--max-new-tokens", help="longest reply in tokens; default eval.max_new_tokens")
TEMPERATURE = typer.Option(0.0, "--temperature", help="sampling temperature; 0 is greedy")
TOP_P = typer.Option(1.0, "--top-p", help="nucleus sampling: keep the likeliest tokens up to this mass; 1 is off")
TOP_K = typer.Option(0, "--top-k", help="sample among the K likeliest tokens; 0 is off")
REPETITION_PENALTY = typer.Option(1.0, "--repetition-penalty", help="> 1 discourages repeats; 1 is off")
SEED = typer.Option(None, "--seed", help="seed for sampling, for repeatable replies")
DEVICE = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ...; default: CUDA when available")


def config_overrides(args: list[str] | None) -> list[str]:
    bad = [arg for arg in args or [] if "=" not in arg]
    if bad:
        raise ConfigError(f"unexpected argument(s): {' '.join(bad)}", expected="key=value config overrides")
    return list(args or [])


def quiet_loading() -> None:
    """No per-file weight-loading bars from transformers: the command prints what it loaded."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def sampling_options(
    config: Any,
    max_new_tokens: int | None,
    temperature: float,
    top_p: float,
    top_k: int,
    repetition_penalty: float,
    seed: int | None,
) -> Any:
    from tunellm.infer.generate import SamplingOptions

    return SamplingOptions(
        max_new_tokens=config.eval.max_new_tokens if max_new_tokens is None else max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=repetition_penalty,
        seed=seed,
    )


def describe(loaded: Any) -> str:
    base = loaded.config.model.name_or_path or "the embedded default model"
    what = f"checkpoint {loaded.checkpoint} on {base}" if loaded.checkpoint else base
    return f"model: {what} (template {loaded.template.name})"


def chat(
    args: list[str] = OVERRIDES,
    adapter: str | None = ADAPTER,
    model: str | None = MODEL,
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="answer this one message and exit"),
    system: str | None = typer.Option(None, "--system", help="system message; default: the one training used"),
    template: str | None = TEMPLATE,
    max_new_tokens: int | None = MAX_NEW_TOKENS,
    temperature: float = TEMPERATURE,
    top_p: float = TOP_P,
    top_k: int = TOP_K,
    repetition_penalty: float = REPETITION_PENALTY,
    seed: int | None = SEED,
    device: str | None = DEVICE,
) -> None:
    """Chat with a model. Commands: /reset forgets the conversation, /exit leaves."""
    overrides = config_overrides(args)
    quiet_loading()
    from tunellm.data.tokenize import TokenizeOptions
    from tunellm.infer.chat import ChatSession, chat_loop, one_shot
    from tunellm.infer.load import load_for_inference

    loaded = load_for_inference(adapter, model=model, template=template, overrides=overrides, device=device)
    options = sampling_options(loaded.config, max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed)
    session = ChatSession(
        loaded.model,
        loaded.tokenizer,
        loaded.template,
        options,
        system=system if system is not None else loaded.config.data.system,
        tokenize_options=TokenizeOptions.from_config(loaded.config.data),
    )
    if prompt is not None:
        one_shot(session, prompt, sys.stdout)
        return
    typer.echo(describe(loaded), err=True)
    chat_loop(session, sys.stdin, sys.stdout)
