"""Build the backend a `tunellm serve` command asks for and run the app with uvicorn."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from tunellm.errors import ConfigError
from tunellm.serve.backends import TransformersBackend, load_models
from tunellm.serve.settings import ServeSettings

BACKENDS = ("auto", "transformers", "vllm")


def parse_adapters(values: Sequence[str]) -> list[tuple[str, str]]:
    """`NAME=PATH` pairs; a bare PATH is named after its run folder."""
    from tunellm.serve.backends import adapter_name

    pairs = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = adapter_name(value), value
        if not name or not path:
            raise ConfigError(f"--adapter {value!r} is not NAME=PATH", field="--adapter", expected="NAME=PATH")
        pairs.append((name, path))
    return pairs


def build_backend(
    run_or_model: str | None,
    adapters: Sequence[tuple[str, str]],
    choice: str,
    settings: ServeSettings,
    *,
    device: str | None = None,
    say: Callable[[str], None] = print,
) -> Any:
    """The backend to serve with: vLLM when asked (or `auto` finds it usable), else transformers."""
    if choice not in BACKENDS:
        raise ConfigError(f"--backend {choice!r} is unknown", field="--backend", expected=" or ".join(BACKENDS))
    if choice != "transformers":
        from tunellm.serve.vllm_serving import vllm_backend_or_reason

        backend, why = vllm_backend_or_reason(run_or_model, adapters, settings, required=choice == "vllm")
        if backend is not None:
            say("generation: vLLM")
            return backend
        say(f"generation: transformers ({why})")
    models = load_models(run_or_model, adapters, device=device)
    return TransformersBackend(models, settings)


def make_server(app: Any, settings: ServeSettings, log_level: str = "info") -> Any:
    import uvicorn

    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=log_level, timeout_graceful_shutdown=5
    )
    return uvicorn.Server(config)


def start_in_thread(app: Any, settings: ServeSettings) -> tuple[Any, threading.Thread]:
    """A running server on a thread (for tests and notebooks); stop it with `server.should_exit = True`."""
    server = make_server(app, settings, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ConfigError(f"the server did not start on {settings.host}:{settings.port}", field="--port")
        time.sleep(0.02)
    return server, thread
