"""`tunellm ui`: the web playground (chat, label, train, evaluate) on http://127.0.0.1:7860."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import typer

from tunellm.cli.args import option
from tunellm.errors import ConfigError


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    user, colon, password = text.partition(":")
    if not colon or not user or not password:
        raise ConfigError("--auth must be user:password", field="--auth", expected="user:password, both non-empty")
    return user, password


def ui(
    host: str = option("host", "127.0.0.1"),
    port: int = option("port", 7860),
    runs: Path = typer.Option(Path("runs"), "--runs", help="folder of training runs (chat with, train into, score)"),
    root: Path = typer.Option(Path("."), "--root", help="the only folder whose files the pages may read or write"),
    auth: str | None = typer.Option(None, "--auth", help="require a login, given as user:password"),
    device: str | None = option("device", help="device for chat: cpu, cuda ...; default: CUDA if any"),
) -> None:
    """Open the web playground: chat side by side, label data, train and evaluate from the browser."""
    credentials = parse_auth(auth)
    if importlib.util.find_spec("gradio") is None:
        raise ConfigError("the web playground needs gradio", hint="pip install 'tunellm[ui]'")
    if not root.is_dir():
        raise ConfigError("--root is not a folder", file=str(root))
    from tunellm.ui.app import Settings, launch

    typer.echo(f"tunellm ui on http://{host}:{port} (root {root.resolve()}, runs {runs.resolve()}); Ctrl-C stops it")
    launch(Settings(root=root, runs=runs, device=device), host=host, port=port, auth=credentials)
