"""The FastAPI app: OpenAI's /v1/models, /v1/chat/completions and /v1/completions, plus /health.

Each request is rendered by its model's own template (the one it was trained with), queued on the
backend's scheduler, and answered as a whole or streamed over server-sent events. Every error a client
can cause is a 4xx in OpenAI's error shape; a closed stream cancels its request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from tunellm.errors import TunellmError
from tunellm.infer.batch import Row
from tunellm.infer.generate import SamplingOptions
from tunellm.infer.stops import TextPieces, with_stops
from tunellm.serve import protocol
from tunellm.serve.backends import ServedModel
from tunellm.serve.protocol import ApiError, ChatRequest, CompletionRequest
from tunellm.serve.scheduler import QueueFull
from tunellm.serve.settings import ServeSettings

log = logging.getLogger(__name__)
OPEN_PATHS = {"/health"}
MIN_TEMPERATURE = 1e-4  # below it, sampling is greedy in all but name and its scaled logits could overflow


class Job:
    """One request on the scheduler: its row, and the ids the worker thread hands back to this event loop."""

    def __init__(self, backend: Any, served: ServedModel, prompt: list[int], options: SamplingOptions, stop: list[str]):
        loop = asyncio.get_running_loop()
        self.items: asyncio.Queue[Any] = asyncio.Queue()
        self.backend = backend
        self.served = served

        def emit(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # a closed event loop: nobody is waiting any more
                loop.call_soon_threadsafe(self.items.put_nowait, item)

        self.row = Row(prompt, options, with_stops(served.stops, stop), emit=emit)
        try:
            backend.scheduler.submit(served.name, self.row)
        except QueueFull as error:
            raise ApiError(429, f"the server is busy: {error}; retry later", code="rate_limit_exceeded") from None

    async def ids(self) -> AsyncIterator[list[int]]:
        while (item := await self.items.get()) is not None:
            if isinstance(item, BaseException):
                raise ApiError(500, f"generation failed: {item}", code="generation_failed")
            yield item

    async def finish(self) -> protocol.Usage:
        async for _ in self.ids():
            pass
        return self.usage()

    async def finish_unless_gone(self, request: Request) -> protocol.Usage:
        """`finish`, but a client that closes its connection meanwhile cancels the request (checked twice a
        second), so a non-streamed request frees its place too."""
        waiting = asyncio.ensure_future(self.finish())
        try:
            while not (await asyncio.wait({waiting}, timeout=0.5))[0]:
                if await request.is_disconnected():
                    raise ApiError(499, "the client closed the connection", code="client_closed")
            return waiting.result()
        finally:
            waiting.cancel()
            self.cancel()

    def usage(self) -> protocol.Usage:
        result = self.row.result(self.served.loaded.tokenizer)
        return protocol.usage(result.prompt_tokens, result.completion_tokens)

    def cancel(self) -> None:
        if not self.row.done:
            self.backend.scheduler.cancel(self.row)


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def served_model(backend: Any, name: str) -> ServedModel:
    if name not in backend.models:
        known = ", ".join(backend.models)
        message = f"model {name!r} is not served here (models: {known})"
        raise ApiError(404, message, param="model", code="model_not_found")
    return backend.models[name]


def start(backend: Any, settings: ServeSettings, served: ServedModel, prompt: list[int], body: Any) -> Job:
    """Check the prompt's length, cap max_tokens, and queue the request."""
    if not prompt:
        raise ApiError(400, "the prompt is empty", param="prompt")
    room = served.context - len(prompt)
    if room < 1:
        raise ApiError(
            400,
            f"the prompt has {len(prompt)} tokens; model {served.name} takes {served.context} in all",
            param="messages" if isinstance(body, ChatRequest) else "prompt",
            code="context_length_exceeded",
        )
    return Job(backend, served, prompt, sampling(body, served, settings, room), body.stop_strings())


def sampling(body: Any, served: ServedModel, settings: ServeSettings, room: int) -> SamplingOptions:
    """The request's settings; those it leaves out come from the model's `generate:` section (as in chat)."""
    given = body.model_fields_set
    generate = served.loaded.config.generate
    temperature = body.temperature if "temperature" in given else generate.temperature
    wanted = body.wanted_tokens() or generate.max_new_tokens
    return SamplingOptions.from_config(
        generate,
        max_new_tokens=min(wanted, settings.max_tokens_cap, room),
        temperature=temperature if temperature >= MIN_TEMPERATURE else 0.0,
        top_p=body.top_p if "top_p" in given else generate.top_p,
        seed=body.seed if "seed" in given else generate.seed,
        stop=(),  # the model's own are in served.stops; the request's are the Job's
    )


def create_app(backend: Any, settings: ServeSettings) -> FastAPI:
    app = FastAPI(title="tunellm", summary="OpenAI-compatible API for tunellm models")
    app.state.backend = backend
    add_error_handlers(app)
    add_auth(app, settings.api_key)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "backend": backend.name, "models": list(backend.models), **backend.scheduler.stats()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        cards = [protocol.model_card(name, served.created) for name, served in backend.models.items()]
        return {"object": "list", "data": cards}

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> dict[str, Any]:
        return protocol.model_card(name, served_model(backend, name).created)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        served = served_model(backend, body.model)
        conversation = body.conversation(served.system)
        job = start(backend, settings, served, served.encode_chat(conversation), body)
        tools = bool(conversation.tools)
        if body.stream:
            return StreamingResponse(stream_chat(job, body, tools), media_type="text/event-stream")
        used = await job.finish_unless_gone(request)
        result = job.row.result(served.loaded.tokenizer)
        return protocol.chat_response(body.model, result.text, result.finish_reason, used, tools)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        served = served_model(backend, body.model)
        job = start(backend, settings, served, served.encode_text(body.prompt_text()), body)
        if body.stream:
            return StreamingResponse(stream_completion(job, body), media_type="text/event-stream")
        used = await job.finish_unless_gone(request)
        result = job.row.result(served.loaded.tokenizer)
        return protocol.completion_body(protocol.new_id("cmpl"), body.model, result.text, result.finish_reason, used)

    return app


async def text_pieces(job: Job) -> AsyncIterator[str]:
    """The reply's text as it is generated (held back where it might begin a stop string)."""
    pieces = TextPieces(job.served.loaded.tokenizer, job.row.stops)
    async for ids in job.ids():
        if not pieces.finished and (piece := pieces.feed(ids)):
            yield piece
    if not pieces.finished and (piece := pieces.flush()):
        yield piece


async def stream_chat(job: Job, body: ChatRequest, tools: bool) -> AsyncIterator[str]:
    ident = protocol.new_id("chatcmpl")
    try:
        yield sse(protocol.chat_chunk(ident, body.model, {"role": "assistant", "content": ""}))
        async for piece in text_pieces(job):
            if not tools:  # a reply that may call tools is sent whole, once its calls can be read
                yield sse(protocol.chat_chunk(ident, body.model, {"content": piece}))
        result = job.row.result(job.served.loaded.tokenizer)
        reason: str = result.finish_reason
        if tools:
            content, calls = protocol.split_tool_calls(result.text)
            delta: dict[str, Any] = {"content": content}
            if calls:
                delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(calls)]
                reason = "tool_calls"
            yield sse(protocol.chat_chunk(ident, body.model, delta))
        yield sse(protocol.chat_chunk(ident, body.model, {}, reason))
        if body.stream_options is not None and body.stream_options.include_usage:
            yield sse(protocol.chat_chunk(ident, body.model, {}, used=job.usage()))
        yield sse("[DONE]")
    except ApiError as error:
        yield sse(error.body())
    finally:
        job.cancel()


async def stream_completion(job: Job, body: CompletionRequest) -> AsyncIterator[str]:
    ident = protocol.new_id("cmpl")
    try:
        async for piece in text_pieces(job):
            yield sse(protocol.completion_body(ident, body.model, piece, None))
        result = job.row.result(job.served.loaded.tokenizer)
        used = job.usage() if body.stream_options is not None and body.stream_options.include_usage else None
        yield sse(protocol.completion_body(ident, body.model, "", result.finish_reason, used))
        yield sse("[DONE]")
    except ApiError as error:
        yield sse(error.body())
    finally:
        job.cancel()


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        first = problems[0] if problems else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(part) for part in first["loc"] if part != "body") or None
        message = f"{param}: {first['msg']}" if param else str(first["msg"])
        if first.get("type") == "json_invalid":
            why = first.get("ctx", {}).get("error", "malformed")
            param, message = None, f"the request body is not valid JSON ({why})"
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        return error_response(ApiError(400, message + more, param=param, code="invalid_request"))

    @app.exception_handler(TunellmError)
    async def bad_data(request: Request, error: TunellmError) -> JSONResponse:
        return error_response(ApiError(400, str(error), param=error.field, code="invalid_request"))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return error_response(ApiError(error.status_code, str(error.detail)))

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception) -> JSONResponse:
        log.exception("request failed")
        return error_response(ApiError(500, f"internal error: {type(error).__name__}", code="internal_error"))


def add_auth(app: FastAPI, api_key: str | None) -> None:
    """With a key, every route but /health needs `Authorization: Bearer KEY`."""
    if api_key is None:
        return
    expected = api_key.encode()

    @app.middleware("http")
    async def check_key(request: Request, call_next: Any) -> Any:
        if request.url.path not in OPEN_PATHS:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
                message = "a valid API key is needed: send the header Authorization: Bearer KEY"
                return error_response(ApiError(401, message, code="invalid_api_key"))
        return await call_next(request)
