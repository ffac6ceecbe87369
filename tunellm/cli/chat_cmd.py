"""`tunellm chat`: talk to a base model or a trained checkpoint, interactively or with one --prompt.

The sampling flags are shortcuts for the `generate:` config keys; `tunellm predict` shares them.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import typer

from tunellm.cli import process
from tunellm.cli.args import OVERRIDES, option, shortcuts, split_args
from tunellm.config.load import check_keys

if TYPE_CHECKING:
    from tunellm.infer.load import InferenceModel


def load_for_generation(
    adapter: str | None,
    model: str | None,
    template: str | None,
    device: str | None,
    overrides: list[str],
    **generate: Any,
) -> InferenceModel:
    """chat's and predict's model: the generate flags become `generate.*` keys, every key is checked before the
    model stack is imported (a typo fails fast), then the model loads quietly."""
    flags = shortcuts(**generate)
    check_keys(flags + overrides)
    from tunellm.infer.load import load_for_inference

    process.for_inference()
    return load_for_inference(adapter, model=model, template=template, overrides=flags + overrides, device=device)


def describe(loaded: Any) -> str:
    base = loaded.config.model.name_or_path or "the embedded default model"
    what = f"checkpoint {loaded.checkpoint} on {base}" if loaded.checkpoint else base
    return f"model: {what} (template {loaded.template.name})"


def chat(
    args: list[str] = OVERRIDES,
    adapter: str | None = option("adapter"),
    model: str | None = option("model"),
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="answer this one message and exit"),
    system: str | None = option("system"),
    template: str | None = option("template"),
    max_new_tokens: int | None = option("max_new_tokens"),
    temperature: float | None = option("temperature"),
    top_p: float | None = option("top_p"),
    top_k: int | None = option("top_k"),
    repetition_penalty: float | None = option("repetition_penalty"),
    seed: int | None = option("seed"),
    stop: list[str] | None = option("stop"),
    device: str | None = option("device"),
) -> None:
    """Chat with a model. Commands: /reset forgets the conversation, /exit leaves."""
    _, overrides = split_args(args, files=0)
    loaded = load_for_generation(
        adapter, model, template, device, overrides, max_new_tokens=max_new_tokens, temperature=temperature,
        top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty, seed=seed, stop=stop, system=system,
    )  # fmt: skip
    from tunellm.infer.chat import ChatSession, chat_loop, one_shot

    session = ChatSession.for_model(loaded)
    if prompt is not None:
        one_shot(session, prompt, sys.stdout)
        return
    typer.echo(describe(loaded), err=True)
    chat_loop(session, sys.stdin, sys.stdout)
