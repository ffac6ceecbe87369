"""`tunellm serve`: an OpenAI-compatible API for a base model and any number of trained adapters."""

from __future__ import annotations

import typer

from tunellm.cli import process
from tunellm.cli.args import option
from tunellm.errors import ConfigError


def serve(
    run_or_model: str | None = typer.Argument(
        None,
        metavar="[RUN_OR_MODEL]",
        help="a training run or checkpoint (served by its folder name, on its base model), or a base model; "
        "default: the embedded default model",
        show_default=False,
    ),
    adapter: list[str] = option("adapter", help="NAME=PATH: also serve this checkpoint as model NAME (repeatable)"),
    host: str = option("host", "127.0.0.1"),
    port: int = option("port", 8000),
    api_key: str | None = typer.Option(
        None, "--api-key", help="require Authorization: Bearer KEY on every route but /health [env TUNELLM_API_KEY]"
    ),
    backend: str = option("backend", "auto"),
    batch_size: int = option("batch_size", 16, help="most requests generated together"),
    batch_wait_ms: float = typer.Option(20, "--batch-wait-ms", help="how long a batch waits for more requests"),
    queue_limit: int = typer.Option(64, "--queue-limit", help="requests queued or running; more get 429"),
    max_tokens_cap: int = typer.Option(512, "--max-tokens-cap", help="the longest reply, whatever is asked"),
    device: str | None = option("device"),
) -> None:
    """Serve models over OpenAI's API: /v1/models, /v1/chat/completions, /v1/completions, /health."""
    from pydantic import ValidationError

    from tunellm.serve.settings import ServeSettings

    try:
        settings = ServeSettings(
            host=host,
            port=port,
            api_key=api_key,
            batch_size=batch_size,
            batch_wait_ms=batch_wait_ms,
            queue_limit=queue_limit,
            max_tokens_cap=max_tokens_cap,
            backend=backend,
        ).with_env_key()
    except ValidationError as error:
        first = error.errors()[0]
        field = "--" + str(first["loc"][0]).replace("_", "-")
        raise ConfigError(f"{field} = {first['input']!r}: {first['msg']}") from None
    process.for_inference()
    from tunellm.serve.app import create_app
    from tunellm.serve.backends import describe
    from tunellm.serve.server import build_backend, make_server, parse_adapters

    say = lambda text: typer.echo(text, err=True)  # noqa: E731
    adapters = parse_adapters(adapter or [])
    served = build_backend(run_or_model, adapters, settings.backend, settings, device=device, say=say)
    for line in describe(served.models):
        say(line)
    if settings.api_key is None and settings.host not in ("127.0.0.1", "localhost", "::1"):
        say(f"warning: listening on {settings.host} without --api-key: anyone who reaches it can use it")
    make_server(create_app(served, settings), settings).run()
    served.close()
